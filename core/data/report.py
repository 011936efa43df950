"""What the data pipeline did: every record read, every example made, every drop by reason."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REJECTS_FILE = "rejects.jsonl"


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
    rejects: list[dict[str, Any]] = field(default_factory=list)
    rejects_file: str | None = None

    def drop(self, reason: str, location: str, problem: str, record: Any = None) -> None:
        self.dropped[reason] += 1
        self.rejects.append({"location": location, "reason": reason, "problem": problem, "record": record})

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "format": self.format, "template": self.template,
            "train_on": self.train_on, "tokenization": self.tokenization, "stratified_by": self.stratified_by,
            "records_read": self.records_read, "conversations": self.conversations,
            "examples": dict(self.examples), "tokens": dict(self.tokens),
            "trained_tokens": dict(self.trained_tokens), "dropped": dict(self.dropped),
            "dropped_total": sum(self.dropped.values()), "excluded_by_source": self.excluded_by_source,
            "rejects_file": self.rejects_file,
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
        if not self.rejects:
            return None
        path = Path(directory) / REJECTS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            for row in self.rejects:
                fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
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
        if self.excluded_by_source:
            lines.append(f"  excluded by --include_sources: {self.excluded_by_source}")
        if self.dropped:
            lines.append("  dropped: " + ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items())))
            if self.rejects_file:
                lines.append(f"  rejected records and reasons: {self.rejects_file}")
        return lines
