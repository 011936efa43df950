"""`airo preview`: the first examples token by token, trained tokens in green, masked dimmed."""

from __future__ import annotations

from typing import Any

from ..config import TrainConfig


def print_preview(examples: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.text import Text

    console = Console()
    for ex in examples:
        console.rule(f"example {ex['index']}: {ex['num_tokens']} tokens, {ex['num_trained']} trained")
        text = Text()
        for piece in ex["tokens"]:
            text.append(piece["text"], style="bold green" if piece["trained"] else "dim")
        console.print(text)
    console.print("[bold green]green[/]: trained   [dim]dim[/]: masked (label -100)")


def token_texts(tokenizer, ids: list[int]) -> list[str]:
    """The text each token adds to the decoded string, spaces included.

    Decoding one token alone loses its leading space (SentencePiece strips it) and shows a
    byte-fallback piece as a replacement character; decoding growing prefixes does not.
    """
    texts, previous = [], ""
    for k in range(1, len(ids) + 1):
        current = tokenizer.decode(ids[:k], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if current.startswith(previous) and not current.endswith("\ufffd"):
            texts.append(current[len(previous):])
            previous = current
        else:  # an incomplete UTF-8 sequence: its bytes show up with the token that completes it
            texts.append("")
    return texts


def preview_examples(config: TrainConfig, n: int = 3) -> list[dict[str, Any]]:
    from ..tokenizer import load_tokenizer
    from .cache import is_preprocessed, load_preprocessed
    from .pipeline import prepare_datasets

    tokenizer = load_tokenizer(config)
    prepared = prepare_datasets(config, tokenizer, use_cache=False) if not is_preprocessed(config.data.dataset) \
        else load_preprocessed(config.data.dataset, tokenizer)
    out = []
    for i in range(min(n, len(prepared.train))):
        row = prepared.train[i]
        tokens = tokenizer.convert_ids_to_tokens(row["input_ids"])
        texts = token_texts(tokenizer, row["input_ids"])
        pieces = [{"id": int(t), "token": tok, "text": text, "trained": lab != -100}
                  for t, tok, text, lab in zip(row["input_ids"], tokens, texts, row["labels"])]
        out.append({"index": i, "num_tokens": len(pieces), "num_trained": sum(p["trained"] for p in pieces),
                    "text": tokenizer.decode(row["input_ids"]), "tokens": pieces})
    return out
