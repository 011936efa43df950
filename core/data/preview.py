"""`airo preview`: the first examples token by token, trained tokens in green, masked dimmed."""

from __future__ import annotations

from typing import Any

from ..config import TrainConfig


def plain_text(example: dict[str, Any]) -> str:
    """The example's text with each run of trained tokens inside ``[[`` ``]]``: readable in a
    file or a pipe, where colours are lost."""
    out, inside = [], False
    for piece in example["tokens"]:
        if piece["trained"] != inside:
            out.append("[[" if piece["trained"] else "]]")
            inside = piece["trained"]
        out.append(piece["text"])
    return "".join(out) + ("]]" if inside else "")


def _from(example: dict[str, Any]) -> str:
    source = example.get("source")
    return f" (datasets[{source['index']}] {source['path']})" if source else ""


def print_preview(examples: list[dict[str, Any]], *, plain: bool | None = None) -> None:
    """Coloured on a terminal; with ``plain`` (the default when not on a terminal) trained
    tokens are marked ``[[like this]]``."""
    from rich.console import Console
    from rich.text import Text

    console = Console()
    if plain is None:
        plain = not console.is_terminal
    lines = getattr(examples, "report_lines", [])
    if lines:  # what each source of a mix gave, before its examples
        print("\n".join(lines))
    if plain:
        for ex in examples:
            print(f"--- example {ex['index']}{_from(ex)}: {ex['num_tokens']} tokens, {ex['num_trained']} trained")
            print(plain_text(ex))
        print("[[...]]: trained tokens; the rest is masked (label -100)")
        return
    for ex in examples:
        console.rule(f"example {ex['index']}{_from(ex)}: {ex['num_tokens']} tokens, {ex['num_trained']} trained")
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


class PreviewExamples(list):
    """The examples, with the data report's lines (``report_lines``): per source of a mix,
    records read, skipped, duplicates removed, decontaminated, tokens and examples."""

    report_lines: list[str] = []


def preview_examples(config: TrainConfig, n: int = 3) -> list[dict[str, Any]]:
    from ..tokenizer import load_tokenizer
    from .cache import is_preprocessed, load_preprocessed
    from .pipeline import prepare_datasets

    tokenizer = load_tokenizer(config)
    prepared = prepare_datasets(config, tokenizer, use_cache=False) if not is_preprocessed(config.data.dataset) \
        else load_preprocessed(config.data.dataset, tokenizer)
    out = PreviewExamples()
    if prepared.sources:
        out.report_lines = prepared.report.summary_lines()
    for i in range(min(n, len(prepared.train))):
        row = prepared.train[i]
        tokens = tokenizer.convert_ids_to_tokens(row["input_ids"])
        texts = token_texts(tokenizer, row["input_ids"])
        pieces = [{"id": int(t), "token": tok, "text": text, "trained": lab != -100}
                  for t, tok, text, lab in zip(row["input_ids"], tokens, texts, row["labels"])]
        example = {"index": i, "num_tokens": len(pieces), "num_trained": sum(p["trained"] for p in pieces),
                   "text": tokenizer.decode(row["input_ids"]), "tokens": pieces}
        if prepared.source_of is not None:
            source = prepared.sources[int(prepared.source_of[i])]
            example["source"] = {"index": source["index"], "path": source["path"]}
        out.append(example)
    return out
