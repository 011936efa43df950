"""A record as read, remembering where it came from: the unit every reader yields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ..errors import DataError

@dataclass
class RawRecord:
    record: dict[str, Any]
    path: str
    line: int | None = None   # 1-based line, for line-oriented files
    index: int | None = None  # 0-based record index, for the rest

    def error(self, problem: str, reason: str = "invalid_record") -> DataError:
        return DataError(problem, path=self.path, line=self.line, index=self.index, reason=reason)

    @property
    def location(self) -> str:
        return self.error("").location


# A source opens a fresh iterator over one split's records each time it is called: the
# pipeline reads the data twice (once to count and split, once to tokenize) rather than
# keeping every record in memory.
Source = Callable[[], Iterator["RawRecord | DataError"]]


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
