"""Reading a source's records into its splits: one pass when there is no eval split to choose,
two otherwise (the first counts, checks and keeps a few bytes per conversation to choose
the eval split by content; the second tokenizes each conversation into its split).
Memory stays flat in the number of records: no pass keeps the records."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..config import TrainConfig
from .convert import iter_conversations
from .plan import Plan
from .report import DataReport
from .split import StratumKeys, content_key, content_keys
from .writer import _SplitWriter


def _one_pass(config: TrainConfig, tokenizer, plans: list[Plan], report: DataReport, arrow_path: Callable[[str], Path],
              sources: dict[str, Any], own_eval: Any, writers: dict[str, _SplitWriter],
              new_maker: Callable) -> None:
    """No eval split to choose: one pass converts, checks, counts and tokenizes into
    ``writers["train"]``. Records past --max_train_samples are still checked and counted."""
    writers["train"] = _SplitWriter(arrow_path("train"), config.data.max_train_samples)
    fmt, screen = plans[0].fmt, plans[0].screen
    maker = new_maker(config, tokenizer, plans, report)
    contents = StratumKeys()  # for the report's count of duplicates
    for conv, raw in iter_conversations(sources["train"](), config, fmt, report, screen=screen):
        report.conversations += 1
        keys = content_keys(conv)
        contents.add({}, keys[1])
        if not writers["train"].full:
            maker.add(writers["train"], conv, raw, keys)
    maker.flush()
    maker.close()
    report.duplicates = contents.duplicates


def _two_passes(config: TrainConfig, tokenizer, plans: list[Plan], report: DataReport,
                arrow_path: Callable[[str], Path], sources: dict[str, Any], own_eval: Any,
                writers: dict[str, _SplitWriter], new_maker: Callable) -> None:
    """The first pass converts and checks every record and keeps what the eval split needs of
    each conversation (its category and source); the second converts again and tokenizes each
    conversation into ``writers[its split]``."""
    d = config.data
    fmt, screen = plans[0].fmt, plans[0].screen
    # First pass: count, check, and choose the eval split.
    keys = StratumKeys()
    record, last = -1, None
    for conv, raw in iter_conversations(sources["train"](), config, fmt, report, screen=screen):
        if raw is not last:  # the conversations of one record (its expansions) are one group
            record, last = record + 1, raw
        keys.add(conv.metadata, content_key(conv), record)
    report.duplicates = keys.duplicates
    eval_indices: list[int] = []
    if own_eval is not None:
        eval_size = sum(1 for _ in iter_conversations(own_eval(), config, fmt, report, screen=screen))
        report.conversations = len(keys) + eval_size
    else:
        eval_indices, report.stratified_by = keys.split(d.eval_dataset_size, config.seed)
        eval_size = len(eval_indices)
        report.conversations = len(keys)
    # Second pass: tokenize into the split each conversation belongs to.
    writers["train"] = _SplitWriter(arrow_path("train"), d.max_train_samples)
    if eval_size:
        writers["eval"] = _SplitWriter(arrow_path("eval"), d.max_eval_samples)
    maker = new_maker(config, tokenizer, plans, report)
    if own_eval is None:
        evals, last_eval = set(eval_indices), (eval_indices[-1] if eval_indices else -1)
        for j, (conv, raw) in enumerate(iter_conversations(sources["train"](), config, fmt, None, screen=screen)):
            maker.add(writers["eval" if j in evals else "train"], conv, raw)
            if writers["train"].full and (j >= last_eval or writers["eval"].full):
                break
    else:
        for split, source in (("train", sources["train"]), ("eval", own_eval)):
            if split not in writers:
                continue
            for conv, raw in iter_conversations(source(), config, fmt, None, screen=screen):
                if writers[split].full:
                    break
                maker.add(writers[split], conv, raw)
            maker.flush()
    maker.flush()
    maker.close()
