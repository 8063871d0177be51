"""Typed errors raised by the library. Only ``twossp.cli`` turns them into messages and exit codes."""

from __future__ import annotations

from dataclasses import dataclass


class TwosspError(Exception):
    """Base class of every error twossp raises on purpose."""


def last_line(error: str | None, default: str = "") -> str:
    """The last line of an error's text, for a one-line report: a stored traceback ends with the
    exception and its message. ``default`` when the text is None, empty or only whitespace."""
    lines = (error or "").strip().splitlines()
    return lines[-1] if lines else default


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

    def __init__(self, problems: list[SpecProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class BudgetError(TwosspError):
    """The requested sparsity cannot be met (the 2SSP budget rule, paper Eq. 5; or a whole-block
    method that would remove every block)."""


class UnsupportedArchitecture(TwosspError):
    """No family adapter is registered for a model's architecture."""


class DataUnavailable(TwosspError):
    """A model or text source could not be fetched or read (no hub, missing file, ...)."""


class SchemaOutdated(TwosspError):
    """The database schema is older than this version of twossp expects."""


class UnknownName(TwosspError, KeyError):
    """A name looked up in a registry (methods, families) is not registered; the message lists the
    registered ones and the closest match."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        import difflib

        self.kind, self.name, self.known = kind, name, known
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        super().__init__(f"unknown {kind} {name!r}{hint}; known: {', '.join(known)}")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class SharedStepFailed(TwosspError):
    """The shared step a run needs failed: the run fails with its error."""


class RecoveryFailed(TwosspError):
    """A pruned model cannot be healed as asked (too little text, a LoRA target it does not have, a
    loss that stopped being finite); the message says what to change."""


class PlacementError(TwosspError):
    """A model's blocks cannot be placed as asked (streamed from a checkpoint that lacks a tensor,
    a block edited outside ``Placement.resident``)."""


class CheckpointError(TwosspError):
    """A pruned checkpoint does not match what its config says (missing or extra weights), or a
    run cannot be exported."""


class ExportUnsupported(CheckpointError):
    """A model cannot be written in the format asked for (a family or method llama.cpp cannot run
    as pruned); the message says why and what to use instead."""


class EngineUnavailable(TwosspError):
    """llama.cpp's Python binding (``llama-cpp-python``) is not installed; the message says how."""


class DatabaseError(TwosspError):
    """The result database cannot be used: a URL that names nothing usable, a server that cannot
    be reached or refuses the credentials, a file that is not a database. Messages never contain a
    password."""


class QueryError(TwosspError):
    """A query given by the user (``twossp db sql``, a view) could not run: a syntax error, an
    unknown table or column, a missing parameter, more than one statement, or a write refused
    because the database is opened read-only. The message carries the database's own words, on one
    line, and never a password."""


class PlanError(TwosspError):
    """Runs of a valid sweep that could not succeed (an unsupported architecture, an infeasible
    budget, a model config that cannot be read), found from local files before any work."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class SweepCancelled(KeyboardInterrupt):
    """``twossp sweep cancel`` was asked for a running sweep; its unfinished runs were released.
    A KeyboardInterrupt, not a TwosspError: it ends the driver the way Ctrl-C does."""


class ViewError(TwosspError):
    """A view cannot be shown as asked: an unknown or ambiguous run key, a parameter that is
    missing or not of its type, a chart with nothing to draw, a figure file of an unknown kind."""
