"""Errors airo raises on purpose. Each one carries a message a user can act on."""

from __future__ import annotations


class AiroError(Exception):
    """Base class: the CLI prints the message and exits non-zero, without a traceback."""

    exit_code = 1


class ConfigError(AiroError):
    """A bad flag, YAML key or value."""

    exit_code = 2


class PluginError(AiroError):
    """A plugin failed to load, collided with another, or broke the contract."""


class DataError(AiroError):
    """A record or file that cannot be turned into training examples.

    ``location`` names the file and the line (JSON Lines) or record index (other files)
    so the message can always be traced back to the input.
    """

    def __init__(self, problem: str, *, path: str | None = None, line: int | None = None,
                 index: int | None = None, reason: str = "bad_record"):
        self.problem = problem
        self.path = path
        self.line = line
        self.index = index
        self.reason = reason
        super().__init__(self.describe())

    @property
    def location(self) -> str:
        where = self.path or "<data>"
        if self.line is not None:
            where += f", line {self.line}"
        elif self.index is not None:
            where += f", record {self.index}"
        return where

    def describe(self) -> str:
        return f"{self.location}: {self.problem}"
