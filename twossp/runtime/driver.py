"""The sweep driver: plan -> skip what is done -> claim -> execute -> store, one transaction per
finished run. The driver is the only writer of the database."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from twossp.db import store
from twossp.db.session import Database
from twossp.plan import RunSpec, plan_sweep
from twossp.runtime.worker import RunResult
from twossp.spec import SweepSpec


class Display(Protocol):
    def start(self, runs: list[RunSpec], statuses: dict[str, str]) -> None: ...
    def progress(self, key: str, phase: str, done: int, total: int) -> None: ...
    def finished(self, run: RunSpec, result: RunResult) -> None: ...
    def stop(self) -> None: ...


class _Silent:
    def start(self, runs: list[RunSpec], statuses: dict[str, str]) -> None: ...
    def progress(self, key: str, phase: str, done: int, total: int) -> None: ...
    def finished(self, run: RunSpec, result: RunResult) -> None: ...
    def stop(self) -> None: ...


@dataclass
class SweepOutcome:
    planned: list[RunSpec]
    skipped: list[RunSpec] = field(default_factory=list)
    completed: list[RunSpec] = field(default_factory=list)
    failed: list[tuple[RunSpec, str]] = field(default_factory=list)


def runs_to_do(runs: list[RunSpec], statuses: dict[str, str], rerun_failed: bool) -> list[RunSpec]:
    """Completed runs are never redone; failed ones only when asked; the rest (new, pending, or
    left ``running`` by a driver that died) are run."""
    todo = []
    for run in runs:
        status = statuses.get(run.key)
        if status == "completed" or (status == "failed" and not rerun_failed):
            continue
        todo.append(run)
    return todo


def run_sweep(spec: SweepSpec, db: Database, executor, *, path: str | None = None, rerun_failed: bool = False,
              display: Display | None = None) -> SweepOutcome:
    display = display or _Silent()
    runs = plan_sweep(spec)
    outcome = SweepOutcome(planned=runs)
    with db.session() as session:
        sweep = store.upsert_sweep(session, spec, path)
        statuses = store.run_statuses(session, [r.key for r in runs])
        todo = runs_to_do(runs, statuses, rerun_failed)
        for run in todo:
            store.claim(session, sweep, run)
    todo_keys = {r.key for r in todo}
    outcome.skipped = [r for r in runs if r.key not in todo_keys]
    display.start(runs, statuses)
    unfinished = set(todo_keys)
    try:
        for run, result in executor.execute(todo, display.progress):
            with db.session() as session:
                store.record(session, run, result)
            unfinished.discard(run.key)
            if result.status == "completed":
                outcome.completed.append(run)
            else:
                outcome.failed.append((run, result.error or "unknown error"))
            display.finished(run, result)
    finally:
        display.stop()
        if unfinished:
            with db.session() as session:
                store.release(session, unfinished)
    return outcome
