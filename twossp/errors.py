"""Typed errors raised by the library. Only ``twossp.cli`` turns them into messages and exit codes."""

from __future__ import annotations

from dataclasses import dataclass


class TwosspError(Exception):
    """Base class of every error twossp raises on purpose."""


@dataclass(frozen=True)
class SpecProblem:
    """One problem found in a sweep file, located by file and line."""

    file: str
    line: int | None
    where: str
    message: str

    def __str__(self) -> str:
        loc = f"{self.file}:{self.line}" if self.line else self.file
        return f"{loc}: {self.where}: {self.message}" if self.where else f"{loc}: {self.message}"


class SpecError(TwosspError):
    """A sweep file is invalid; carries every problem found, not just the first."""

    def __init__(self, problems: list[SpecProblem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class BudgetError(TwosspError):
    """The requested sparsity cannot be met by the 2SSP budget rule (PROTOCOL.md, Eq. 5)."""


class UnsupportedArchitecture(TwosspError):
    """No family adapter is registered for a model's architecture."""


class DataUnavailable(TwosspError):
    """A model or text source could not be fetched or read (no hub, missing file, ...)."""


class SchemaOutdated(TwosspError):
    """The database schema is older than this version of twossp expects."""
