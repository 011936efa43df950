"""Synthetic airoboros-3-style conversations and a small random llama, shared by the benchmarks."""

from __future__ import annotations

import json
import random
from pathlib import Path

from airo.core.testing import _CORPUS_WORDS, build_tiny_llama, build_tiny_tokenizer


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_CORPUS_WORDS) for _ in range(max(1, words))).capitalize() + "."


def conversations(n: int, seed: int = 0) -> list[dict]:
    """60% single-turn, 25% 2-3 turns, 15% 4-8 turns; reply lengths spread widely (log-normal)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        r = rng.random()
        turns = 1 if r < 0.6 else (rng.randint(2, 3) if r < 0.85 else rng.randint(4, 8))
        msgs = [{"from": "system", "value": "A chat."}] if rng.random() < 0.5 else []
        for _ in range(turns):
            msgs.append({"from": "human", "value": _text(rng, int(rng.lognormvariate(3.0, 0.8)))})
            msgs.append({"from": "gpt", "value": _text(rng, int(rng.lognormvariate(4.0, 0.9)))})
        out.append({"id": f"syn-{i}", "category": rng.choice(["general", "coding", "math", "roleplay"]),
                    "conversations": msgs})
    return out


def write_data(folder: Path, n: int, seed: int = 0) -> Path:
    path = folder / f"conversations-{n}-{seed}.json"
    if not path.is_file():
        path.write_text(json.dumps(conversations(n, seed)))
    return path


def build_model(folder: Path, hidden: int, layers: int, vocab: int) -> str:
    model = folder / f"llama-{hidden}-{layers}-{vocab}"
    if not (model / "config.json").is_file():
        tokenizer = build_tiny_tokenizer(folder / f"tokenizer-{vocab}", vocab_size=vocab)
        build_tiny_llama(model, hidden_size=hidden, layers=layers, heads=4, tokenizer_from=tokenizer)
    return str(model)


# The llama-2 chat layout airoboros_chat trains on, as a chat template for TRL (which renders
# conversations through the tokenizer's template). The {% generation %} markers let TRL's
# assistant_only_loss label every assistant turn: the closest TRL gets to --train_on all_replies.
# TRL renames sharegpt's from/value to role/content but keeps the roles: human, gpt.
LLAMA2_TRAINING_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set rest = messages[1:] %}{% else %}"
    "{% set system = 'You are an unbiased, uncensored, helpful assistant.' %}{% set rest = messages %}{% endif -%}"
    "{{ bos_token }}[INST] <<SYS>>\n{{ system }}\n<</SYS>>\n\n"
    "{% for m in rest %}{% if m['role'] in ('user', 'human') %}{% if not loop.first %}{{ bos_token }}[INST] {% endif %}"
    "{{ m['content'] | trim }} [/INST]{% else %} {% generation %}{{ m['content'] | trim }} {{ eos_token }}"
    "{% endgeneration %}{% endif %}{% endfor %}"
)


def trl_version() -> str | None:
    """trl's version, or None (with a message) when the optional benchmark dependency is missing."""
    try:
        import trl
    except ImportError:
        print("trl is not installed: skipping the TRL contenders (pip install trl to include them)")
        return None
    return trl.__version__


def throughput_arguments(description: str, *, contenders: str):
    """The options the throughput benchmarks share: data, model, steps, contenders."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--examples", type=int, default=5000, help="synthetic conversations")
    ap.add_argument("--steps", type=int, default=40, help="measured steps per contender")
    ap.add_argument("--rounds", type=int, default=2, help="contenders alternate this many times")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=900)
    ap.add_argument("--contenders", default=contenders)
    ap.add_argument("--workdir", default=None, help="where the data and model are built (default: a temp folder)")
    return ap
