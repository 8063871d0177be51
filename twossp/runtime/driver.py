"""The sweep driver: plan -> claim -> execute -> store, one transaction per finished run. The
driver is the only writer of the database.

Several drivers may work on one database (the same sweep from two shells, two sweeps sharing
cells). A run is claimed atomically just before it is handed to the executor, so each run is
executed by one driver at a time; while it runs, a background thread refreshes its heartbeat. A
``running`` row whose heartbeat is older than ``stale_after`` belongs to a driver that died
(SIGKILL, a lost machine) and is claimed again by the next driver that wants it.
"""

from __future__ import annotations

import _thread
import logging
import os
import platform
import threading
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Iterator, Protocol

from twossp.db import store
from twossp.db.models import utcnow
from twossp.db.session import Database
from twossp.plan import RunSpec, plan_sweep
from twossp.runtime.executors import Executor
from twossp.runtime.worker import RunResult
from twossp.spec import SweepSpec

log = logging.getLogger("twossp.driver")

#: A ``running`` run whose heartbeat is older than this belongs to a dead driver.
STALE_AFTER = 120.0


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


class SweepCancelled(KeyboardInterrupt):
    """``twossp sweep cancel`` was asked for this sweep; unfinished runs were released."""


@dataclass
class SweepOutcome:
    planned: list[RunSpec]
    skipped: list[RunSpec] = field(default_factory=list)     # completed before, or failed (no --rerun-failed)
    elsewhere: list[RunSpec] = field(default_factory=list)   # held by another live driver
    completed: list[RunSpec] = field(default_factory=list)
    failed: list[tuple[RunSpec, str]] = field(default_factory=list)
    retried: list[tuple[RunSpec, str]] = field(default_factory=list)
    dropped: list[RunSpec] = field(default_factory=list)     # taken over by another driver meanwhile


def runs_to_do(runs: list[RunSpec], statuses: dict[str, str], rerun_failed: bool) -> list[RunSpec]:
    """Completed runs are never redone; failed ones only when asked; the rest (new, pending, or
    ``running`` — which the claim then takes only if its driver is dead) are candidates."""
    todo = []
    for run in runs:
        status = statuses.get(run.key)
        if status == "completed" or (status == "failed" and not rerun_failed):
            continue
        todo.append(run)
    return todo


def driver_id() -> str:
    return f"{platform.node()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class _Heartbeat(threading.Thread):
    """Refreshes the heartbeat of the runs this driver holds; on a cancellation request, interrupts
    the driver's main thread (as Ctrl-C would)."""

    def __init__(self, db: Database, owner: str, sweep_id: int, interval: float):
        super().__init__(name="twossp-heartbeat", daemon=True)
        self.db, self.owner, self.sweep_id, self.interval = db, owner, sweep_id, interval
        self.halt = threading.Event()
        self.cancelled = False

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            try:
                with self.db.session() as session:
                    cancel = store.heartbeat(session, self.owner, self.sweep_id)
            except Exception as exc:  # noqa: BLE001 - a database hiccup must not kill the sweep
                log.warning("heartbeat failed (will retry): %s", exc)
                continue
            if cancel and not self.cancelled:
                self.cancelled = True
                _thread.interrupt_main()

    def stop(self) -> None:
        self.halt.set()
        self.join()


def run_sweep(spec: SweepSpec, db: Database, executor: Executor, *, path: str | None = None, rerun_failed: bool = False,
              display: Display | None = None, stale_after: float = STALE_AFTER) -> SweepOutcome:
    display = display or _Silent()
    runs = plan_sweep(spec)
    outcome = SweepOutcome(planned=runs)
    owner = driver_id()
    with db.session() as session:
        sweep_id = store.upsert_sweep(session, spec, path).id
        statuses = store.run_statuses(session, [r.key for r in runs])
    candidates = runs_to_do(runs, statuses, rerun_failed)
    outcome.skipped = [r for r in runs if r not in candidates]
    display.start(runs, statuses)
    held: set[str] = set()
    unplaceable: dict[str, str] = {}  # run key -> why no node of the executor's cluster can ever hold it

    def claim(run: RunSpec) -> bool:
        stale_before = utcnow() - timedelta(seconds=stale_after)
        with db.session() as session:
            ok = store.claim(session, sweep_id, run, owner, rerun_failed=rerun_failed, stale_before=stale_before)
        if ok:
            held.add(run.key)
        else:
            outcome.elsewhere.append(run)
        return ok

    def claimed() -> Iterator[RunSpec]:
        """Candidates, each claimed the moment the executor asks for it."""
        for run in candidates:
            if run.key not in unplaceable and claim(run):
                yield run

    def finished(run: RunSpec, result: RunResult) -> None:
        with db.session() as session:
            stored = store.record(session, run, result, owner)
        held.discard(run.key)
        if stored is None:
            log.warning("run %s (%s) was taken over by another driver; this result is dropped", run.label, run.key)
            outcome.dropped.append(run)
        elif result.status == "completed":
            outcome.completed.append(run)
        else:
            outcome.failed.append((run, result.error or "unknown error"))
        display.finished(run, result)

    def retried(run: RunSpec, reason: str) -> None:
        log.warning("run %s (%s) retried: %s", run.label, run.key, reason)
        outcome.retried.append((run, reason))
        with db.session() as session:
            store.add_attempt(session, run.key, owner)

    beat = _Heartbeat(db, owner, sweep_id, interval=max(0.2, min(30.0, stale_after / 4)))
    beat.start()
    try:
        # Runs that can never be placed fail now, with the reason, not hours into the sweep.
        unplaceable.update(executor.unplaceable(candidates) if candidates else {})
        for run in candidates:
            if run.key in unplaceable and claim(run):
                finished(run, RunResult(key=run.key, status="failed",
                                        error=f"ResourcesUnavailable: {unplaceable[run.key]}"))
        for run, result in executor.execute(claimed(), display.progress, on_retry=retried):
            finished(run, result)
    except KeyboardInterrupt:
        if beat.cancelled:
            raise SweepCancelled(f"sweep {spec.name!r} was cancelled") from None
        raise
    finally:
        beat.stop()
        display.stop()
        if held:
            with db.session() as session:
                store.release(session, owner, held)
    return outcome
