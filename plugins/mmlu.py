"""The built-in ``mmlu`` evaluation: the seed's multiple-choice score at every evaluation.

``--do_mmlu_eval`` scores the questions of ``--mmlu_dataset`` (``mmlu-zs`` zero-shot,
``mmlu-fs``/``mmlu`` five-shot: ``MMLU_DATA_DIR/{zero,five}_shot_mmlu_{val,test}.json``, or
a JSON / JSON Lines file of its own) whenever the trainer evaluates. Each record is
``{"input": prompt, "output": "A".."D", "subject": ...}``; the model sees BOS + input and
its answer is the argmax of the next-token logits over the tokens of A, B, C and D. Logged:
``mmlu_loss`` (the LM loss of the answer token), ``mmlu_<split>_accuracy_<subject>`` and
their mean ``mmlu_<split>_accuracy``. airo does not ship MMLU.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airo.core import DataError, hookimpl

LETTERS = ("A", "B", "C", "D")
NAMED = {"mmlu-zs": "zero_shot", "mmlu-fs": "five_shot", "mmlu": "five_shot"}
SPLIT_FILES = {"eval": "val", "test": "test"}


def _opt(default, help: str, **constraint):
    # none of these changes what is trained: a resumed run may turn the evaluation on or off
    return field(default=default, metadata={"help": help, "resumable": True, **constraint})


@dataclass
class MMLUOptions:
    do_mmlu_eval: bool = _opt(False, "Score MMLU multiple-choice questions at every evaluation (the seed's).")
    mmlu_dataset: str = _opt("mmlu-fs", "mmlu-zs (zero-shot), mmlu-fs or mmlu (five-shot), or a JSON/JSON Lines "
                                        "file of {input, output: A-D, subject} records.")
    mmlu_split: str = _opt("eval", "eval (the *_val.json files) or test (*_test.json); names the metrics.",
                           choices=list(SPLIT_FILES))
    max_mmlu_samples: int | None = _opt(None, "Score only the first N questions.", min=1)
    mmlu_source_max_len: int = _opt(2048, "Longest question in tokens; a longer one keeps its last tokens.",
                                    min=1, max=2 ** 24)
    mmlu_data_dir: str = _opt("data/mmlu", "Folder of the {zero,five}_shot_mmlu_{val,test}.json files "
                                           "(relative to the current directory).")

    def path(self) -> Path:
        named = NAMED.get(self.mmlu_dataset)
        if named is None:
            return Path(self.mmlu_dataset)
        return Path(self.mmlu_data_dir) / f"{named}_mmlu_{SPLIT_FILES[self.mmlu_split]}.json"

    def validate(self, config) -> None:
        """Before any model loads: the questions are there, readable, and will be asked."""
        if not self.do_mmlu_eval:
            return
        path = self.path()
        if not path.is_file():
            how = ("--mmlu_dataset" if self.mmlu_dataset not in NAMED else
                   f"--mmlu_dataset {self.mmlu_dataset} --mmlu_split {self.mmlu_split} in --mmlu_data_dir")
            raise ValueError(f"--do_mmlu_eval: {path} not found ({how}); airo does not ship MMLU: put the seed's "
                             "data/mmlu files there or pass --mmlu_dataset FILE.json")
        try:
            load_questions(path)
        except DataError as exc:
            raise ValueError(f"--do_mmlu_eval: {exc}") from None
        if config.data.eval_dataset_size == 0 or str(config.training.get("eval_strategy", "")) == "no" \
                and "eval_strategy" in config.explicit:
            raise ValueError("--do_mmlu_eval scores at each evaluation, and this run has none: keep an eval split "
                             "(--eval_dataset_size) and an --eval_strategy other than no")


_LOADED: dict[tuple, list[dict[str, str]]] = {}


def load_questions(path: Path) -> list[dict[str, str]]:
    """The records of an MMLU file (a JSON list, or JSON Lines), checked; cached per file version."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key in _LOADED:
        return _LOADED[key]
    text = path.read_text(encoding="utf-8")
    try:
        records = json.loads(text)
    except ValueError:
        try:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as exc:
            raise DataError(f"not JSON or JSON Lines: {exc}", path=str(path)) from None
    if not isinstance(records, list) or not records:
        raise DataError("expected a non-empty list of {input, output, subject} records", path=str(path))
    questions = []
    for i, record in enumerate(records):
        if not isinstance(record, dict) or not isinstance(record.get("input"), str):
            raise DataError("expected an object with an 'input' string", path=str(path), index=i)
        if record.get("output") not in LETTERS:
            raise DataError(f"'output' must be one of A, B, C, D, got {record.get('output')!r}", path=str(path),
                            index=i)
        subject = record.get("subject", "all")
        questions.append({"input": record["input"], "output": record["output"], "subject": str(subject)})
    _LOADED.clear()  # one file at a time: a run evaluates one
    _LOADED[key] = questions
    return questions


def letter_ids(tokenizer) -> list[int]:
    """The token of each answer letter: its last id when tokenized alone (a SentencePiece
    tokenizer may put a word-start piece before it)."""
    ids = []
    for letter in LETTERS:
        pieces = tokenizer(letter, add_special_tokens=False)["input_ids"]
        if not pieces:
            raise DataError(f"the tokenizer turns {letter!r} into no token; the MMLU score needs one per letter")
        ids.append(pieces[-1])
    if len(set(ids)) != len(ids):
        raise DataError(f"the tokenizer gives A, B, C, D the tokens {ids}, not four different ones")
    return ids


def encode(tokenizer, questions: list[dict[str, str]], max_len: int) -> list[list[int]]:
    """Each question as the model sees it (BOS + input, as the seed tokenized it); a longer
    one keeps its last ``max_len`` tokens, where the question and "Answer:" are."""
    bos = tokenizer.bos_token or ""
    encoded = tokenizer([bos + q["input"] for q in questions], add_special_tokens=False)["input_ids"]
    return [ids[-max_len:] for ids in encoded]


def _answer_logits(ctx, batch, lengths: list[int]):
    """The next-token logits at each sequence's last token, ``[batch, vocab]`` in float32.
    Only those positions go through the LM head (``logits_to_keep``): a five-shot batch's
    full logits would take gigabytes."""
    import torch

    last = torch.tensor(lengths, device=batch["input_ids"].device) - 1
    keep = torch.unique(last)
    rows = torch.arange(len(lengths), device=last.device)
    try:
        logits = ctx.forward(batch, logits_to_keep=keep).logits
        column = torch.searchsorted(keep, last)
    except TypeError:  # a model whose forward has no logits_to_keep
        logits = ctx.forward(batch).logits
        column = last
    return logits[rows.to(logits.device), column.to(logits.device)].float()


def score(ctx, questions: list[dict[str, str]], sequences: list[list[int]], split: str) -> dict[str, float]:
    """The seed's metrics for ``questions`` (tokenized as ``sequences``)."""
    import torch
    import torch.nn.functional as F

    abcd = letter_ids(ctx.tokenizer)
    answers = [abcd[LETTERS.index(q["output"])] for q in questions]
    preds: list[int] = []
    loss_sum = 0.0
    done = 0
    for batch, lengths in ctx.batches(sequences):
        answer_logits = _answer_logits(ctx, batch, lengths)
        preds += answer_logits[:, abcd].argmax(dim=-1).tolist()
        target = torch.tensor(answers[done:done + len(lengths)], device=answer_logits.device)
        loss_sum += F.cross_entropy(answer_logits, target, reduction="sum").item()
        done += len(lengths)
    by_subject: dict[str, list[bool]] = {}
    for question, pred in zip(questions, preds):
        by_subject.setdefault(question["subject"], []).append(LETTERS[pred] == question["output"])
    results = {"mmlu_loss": loss_sum / len(questions)}
    accuracies = []
    for subject in sorted(by_subject):
        accuracy = sum(by_subject[subject]) / len(by_subject[subject])
        results[f"mmlu_{split}_accuracy_{subject}"] = accuracy
        accuracies.append(accuracy)
    results[f"mmlu_{split}_accuracy"] = math.fsum(accuracies) / len(accuracies)
    return results


_ENCODED: dict[tuple, list[list[int]]] = {}


def mmlu(ctx) -> dict[str, Any]:
    options = ctx.config.section("mmlu")
    if not options.do_mmlu_eval:
        return {}
    path = options.path()
    questions = load_questions(path)[:options.max_mmlu_samples]
    key = (id(ctx.tokenizer), str(path.resolve()), options.mmlu_source_max_len, len(questions))
    if key not in _ENCODED:  # tokenized once per run, not at every evaluation
        _ENCODED.clear()
        _ENCODED[key] = encode(ctx.tokenizer, questions, options.mmlu_source_max_len)
    return score(ctx, questions, _ENCODED[key], options.mmlu_split)


@hookimpl
def register_options(register):
    register("mmlu", MMLUOptions, description="the seed's MMLU score at every evaluation")


@hookimpl
def register_evaluations(register):
    register("mmlu", mmlu, description="MMLU multiple-choice accuracy (--do_mmlu_eval)")
