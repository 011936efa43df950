"""What the data pipeline did: every record read, every example made, every drop by reason.

Rejected records go to a file as they are dropped (``spool_rejects``); memory keeps the
counts and the first few rejects, for messages.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .paths import REJECTS_FILE  # noqa: F401 - re-exported
KEPT_REJECTS = 5  # rejects kept in memory (without their records) when they are spooled to a file


@dataclass
class DataReport:
    dataset: str = ""
    format: str = ""
    template: str = ""
    train_on: str = ""
    tokenization: str = ""
    stratified_by: str | None = None
    records_read: int = 0
    conversations: int = 0
    examples: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    trained_tokens: dict[str, int] = field(default_factory=dict)
    dropped: Counter = field(default_factory=Counter)
    excluded_by_source: int = 0
    # SHA-256 of the data as read (airo.core.data.io.ReadLedger), equal to
    # fingerprint.dataset_content_hash for unchanged files; None for a Hub dataset.
    content_hash: str | None = None
    # conversations whose normalised content equals an earlier one's (split.content_key)
    duplicates: int = 0
    # a mix (``datasets:``): examples removed as duplicates across sources (--dedup), and per
    # source (in list order) what it gave: sources.SourceState.summary
    dedup: str = "none"
    duplicates_removed: int = 0
    sources: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)  # all, or the first few when spooled
    rejects_file: str | None = None
    # The file holding every reject: being written (spool_rejects) or an earlier run's.
    rejects_path: Path | None = field(default=None, repr=False, compare=False)
    _spool: IO[str] | None = field(default=None, repr=False, compare=False)

    def spool_rejects(self, path: str | Path) -> None:
        """Write every later reject to ``path`` as it happens (rejects stay out of memory)."""
        self.close_spool()
        self.rejects_path = Path(path)
        self.rejects_path.parent.mkdir(parents=True, exist_ok=True)
        # backslashreplace: a lone surrogate from a JSON "\ud800" is written as that escape.
        self._spool = open(self.rejects_path, "w", encoding="utf-8", errors="backslashreplace")

    def close_spool(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    def drop(self, reason: str, location: str, problem: str, record: Any = None) -> None:
        self.dropped[reason] += 1
        row = {"location": location, "reason": reason, "problem": problem, "record": record}
        if self._spool is None:
            self.rejects.append(row)
            return
        self._spool.write(_reject_line(row))
        if len(self.rejects) < KEPT_REJECTS:
            self.rejects.append({**row, "record": None})

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "format": self.format, "template": self.template,
            "train_on": self.train_on, "tokenization": self.tokenization, "stratified_by": self.stratified_by,
            "records_read": self.records_read, "conversations": self.conversations,
            "examples": dict(self.examples), "tokens": dict(self.tokens),
            "trained_tokens": dict(self.trained_tokens), "dropped": dict(self.dropped),
            "dropped_total": sum(self.dropped.values()), "excluded_by_source": self.excluded_by_source,
            "duplicates": self.duplicates, "content_hash": self.content_hash, "rejects_file": self.rejects_file,
            **({"dedup": self.dedup, "duplicates_removed": self.duplicates_removed, "sources": self.sources}
               if self.sources else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DataReport":
        report = cls()
        for key, value in data.items():
            if key == "dropped":
                report.dropped = Counter(value)
            elif hasattr(report, key) and key != "dropped_total":
                setattr(report, key, value)
        return report

    def write_rejects(self, directory: str | Path) -> str | None:
        """Every reject to ``directory/rejects.jsonl``; its path, or None when nothing was dropped."""
        return self.copy_rejects(Path(directory) / REJECTS_FILE)

    def copy_rejects(self, path: str | Path) -> str | None:
        """Every reject to the file ``path``; its path, or None when nothing was dropped."""
        spooled = self.rejects_path is not None and self.rejects_path.is_file()
        if not self.rejects and not (spooled and sum(self.dropped.values())):
            return None
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if spooled:
            if self._spool is not None:
                self._spool.flush()
            if self.rejects_path.resolve() != path.resolve():
                shutil.copyfile(self.rejects_path, path)
        else:
            with open(path, "w", encoding="utf-8", errors="backslashreplace") as fh:
                fh.writelines(_reject_line(row) for row in self.rejects)
        self.rejects_file = str(path)
        return self.rejects_file

    def summary_lines(self) -> list[str]:
        lines = [
            f"data: {self.dataset} (format {self.format}, template {self.template}, train on {self.train_on}, "
            f"{self.tokenization} tokenization)",
            f"  records read: {self.records_read}; conversations: {self.conversations}",
            "  examples: " + ", ".join(f"{k} {v}" for k, v in self.examples.items())
            + "; tokens: " + ", ".join(f"{k} {v} ({self.trained_tokens.get(k, 0)} trained)"
                                       for k, v in self.tokens.items()),
        ]
        if self.duplicates:
            lines.append(f"  duplicates: {self.duplicates} conversations repeat an earlier one (each kept on one side "
                         "of the eval split)")
        if self.sources:
            lines.append(f"  sources ({len(self.sources)}, dedup {self.dedup}: {self.duplicates_removed} removed):")
            lines.extend("    " + source_line(row) for row in self.sources)
        if self.excluded_by_source:
            lines.append(f"  excluded by --include_sources: {self.excluded_by_source}")
        if self.dropped:
            lines.append("  dropped: " + ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items())))
            if self.dropped.get("too_long"):
                lines.append("  (too_long: longer than --model_max_len; --truncate_excess keeps their start instead)")
            if self.rejects_file:
                lines.append(f"  rejected records and reasons: {self.rejects_file}")
        return lines


def source_line(row: dict[str, Any]) -> str:
    """One source of a mix in a line: what was read, left out (and why), and what it gave."""
    share = {"weight": "weight", "records": "records", "epochs": "epochs"}.get(row.get("share"), "weight")
    skipped = row.get("skipped") or {}
    left = [f"skipped {sum(skipped.values())} ({', '.join(f'{k} {v}' for k, v in sorted(skipped.items()))})"
            if skipped else "skipped 0",
            f"duplicates removed {row.get('duplicates_removed', 0)}", f"decontaminated {row.get('decontaminated', 0)}"]
    return (f"[{row['index']}] {row['path']} ({row['format']}, {row['template']}; {share} {row.get('amount', 1):g}): "
            f"read {row['records_read']}, {', '.join(left)}; train {row['train_examples']}, eval "
            f"{row['eval_examples']}; {row['tokens']} tokens, {row['trained_tokens']} trained "
            f"({100 * row.get('share_of_trained_tokens', 0):.1f}% of the mix's)"
            + (" [cached]" if row.get("from_cache") else ""))


def _reject_line(row: dict[str, Any]) -> str:
    try:
        return json.dumps(row, ensure_ascii=False, default=str) + "\n"
    except (RecursionError, ValueError) as exc:  # a record nested too deeply to write back out
        row = {**row, "record": f"<not written: {type(exc).__name__}: {exc}>"}
        return json.dumps(row, ensure_ascii=False, default=str) + "\n"
