"""The sweep driver: plan -> claim -> execute -> store, one transaction per finished run. The
driver is the only writer of the database.

Several drivers may work on one database (the same sweep from two shells, two sweeps sharing
cells). A run is claimed atomically just before it is handed to the executor, so each run is
executed by one driver at a time; while it runs, a background thread refreshes its heartbeat. A
``running`` row whose heartbeat is older than ``stale_after`` belongs to a driver that died
(SIGKILL, a lost machine) and is claimed again by the next driver that wants it; one whose owner
is a process of this machine that no longer exists is claimed at once. Runs another live driver
holds are waited for: a sweep ends with every run completed or failed, or says which are not.

Runs that heal a pruned model (``recovery:``) go after every other run: each starts from its pruning
run's model, rebuilt from the masks the database holds, so the pruning is never repeated.

Work several of the runs to do share (``plan.plan_shared``; off with ``runtime.share: false``) is
handed to the executor with them: the steps kept in the database are read back and not computed
again; each step computed now is kept as it finishes, before the runs that took it are stored.
"""

from __future__ import annotations

import _thread
import logging
import os
import platform
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Iterator, Protocol

from twossp.contracts import RunResult, RunStatus, StepResult
from twossp.db import store
from twossp.db.models import utcnow
from twossp.db.database import Database
from twossp.errors import SweepCancelled, last_line
from twossp.plan import RunSpec, StepSpec, plan_shared, plan_starts, plan_sweep
from twossp.runtime.executors import Executor, SharedWork
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


@dataclass
class SweepOutcome:
    planned: list[RunSpec]
    skipped: list[RunSpec] = field(default_factory=list)     # completed before, or failed (no --rerun-failed)
    skipped_failed: list[RunSpec] = field(default_factory=list)  # of those, the ones that had failed
    elsewhere: list[RunSpec] = field(default_factory=list)   # completed meanwhile by another driver
    completed: list[RunSpec] = field(default_factory=list)
    failed: list[tuple[RunSpec, str]] = field(default_factory=list)
    retried: list[tuple[RunSpec, str]] = field(default_factory=list)
    dropped: list[RunSpec] = field(default_factory=list)     # taken over by another driver meanwhile
    #: shared steps: computed by this sweep (completed or failed), read back from the database
    steps_computed: list[tuple[StepSpec, StepResult]] = field(default_factory=list)
    steps_reused: list[StepSpec] = field(default_factory=list)


def runs_to_do(runs: list[RunSpec], statuses: dict[str, str], rerun_failed: bool) -> list[RunSpec]:
    """Completed runs are never redone; failed ones only when asked; the rest (new, pending, or
    ``running`` — which the claim then takes only if its driver is dead) are candidates."""
    todo = []
    for run in runs:
        status = statuses.get(run.key)
        if status == RunStatus.COMPLETED or (status == RunStatus.FAILED and not rerun_failed):
            continue
        todo.append(run)
    return todo


def driver_id() -> str:
    return f"{platform.node()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_is_dead(owner: str | None) -> bool:
    """Whether ``owner`` (host:pid:id) is a driver process of this machine that no longer exists.
    Owners on other hosts are never known dead: their heartbeat has to go stale."""
    host, _, rest = (owner or "").partition(":")
    pid = rest.partition(":")[0]
    if host != platform.node() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        return False
    return False


class _Heartbeat(threading.Thread):
    """Refreshes the heartbeat of the runs this driver holds; on a cancellation request, interrupts
    the driver's main thread (as Ctrl-C would)."""

    def __init__(self, db: Database, owner: str, sweep_id: int, interval: float) -> None:
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


class SweepDriver:
    """One ``sweep run``: claim each run as the executor can start it, store each result as it
    arrives, release what is unfinished on the way out."""

    #: seconds between looks at runs another driver holds
    poll_every = 2.0

    def __init__(self, spec: SweepSpec, db: Database, executor: Executor, *, path: str | None = None,
                 rerun_failed: bool = False, display: Display | None = None, stale_after: float = STALE_AFTER,
                 share: bool = True) -> None:
        self.spec, self.db, self.executor, self.path = spec, db, executor, path
        self.rerun_failed, self.stale_after = rerun_failed, stale_after
        self.share = share and spec.runtime.share
        self.shared: SharedWork | None = None
        self.display = display or _Silent()
        self.owner = driver_id()
        self.outcome = SweepOutcome(planned=plan_sweep(spec))
        self.held: set[str] = set()
        self.unplaceable: dict[str, str] = {}  # run key -> why no node of the executor's cluster can hold it
        self.sweep_id = 0

    # --- the steps ------------------------------------------------------------------------------
    def run(self) -> SweepOutcome:
        runs = self.outcome.planned
        with self.db.session() as session:
            self.sweep_id = store.upsert_sweep(session, self.spec, self.path, [r.key for r in runs]).id
            statuses = store.run_statuses(session, [r.key for r in runs])
        candidates = runs_to_do(runs, statuses, self.rerun_failed)
        self.outcome.skipped = [r for r in runs if r not in candidates]
        self.outcome.skipped_failed = [r for r in self.outcome.skipped if statuses.get(r.key) == RunStatus.FAILED]
        self.display.start(runs, statuses)
        beat = _Heartbeat(self.db, self.owner, self.sweep_id, interval=max(0.2, min(30.0, self.stale_after / 4)))
        beat.start()
        try:
            self.fail_unplaceable(candidates)
            pruning = [r for r in candidates if r.recovery is None]
            recovered = [r for r in candidates if r.recovery is not None]
            if self.share:
                self.shared = self.plan_shared([r for r in pruning if r.key not in self.unplaceable])
            self.execute_all(pruning)
            if recovered:  # once every pruning run is stored: each recovered run starts from its model
                self.shared = self.start_points(recovered)
                self.execute_all(recovered)
        except KeyboardInterrupt:
            if beat.cancelled:
                raise SweepCancelled(f"sweep {self.spec.name!r} was cancelled") from None
            raise
        finally:
            beat.stop()
            self.display.stop()
            if self.held:
                with self.db.session() as session:
                    store.release(session, self.owner, self.held)
        return self.outcome

    def execute_all(self, runs: list[RunSpec]) -> None:
        waiting = self.execute(runs)
        while waiting:  # held by live drivers: theirs to finish, or ours once they die
            time.sleep(self.poll_every)
            waiting = self.execute(waiting)

    def start_points(self, runs: list[RunSpec]) -> SharedWork:
        """The pruned models the recovered runs start from: their pruning runs' masks, read from the
        database (stored by this sweep or an earlier one), or why there are none."""
        plan = plan_starts(runs)
        with self.db.session() as session:
            done = store.pruned_models(session, plan.steps)
        return SharedWork(plan, done=done)

    def plan_shared(self, runs: list[RunSpec]) -> SharedWork:
        """The shared steps of the runs to do, those the database keeps read back."""
        plan = plan_shared(runs)
        done = {}
        if plan.steps:
            with self.db.session() as session:
                done = store.shared_results(session, plan.steps)
        self.outcome.steps_reused = [plan.steps[key] for key in done]
        return SharedWork(plan, done=done, on_finished=self.step_finished)

    def step_finished(self, step: StepSpec, result: StepResult) -> None:
        self.outcome.steps_computed.append((step, result))
        if result.status != RunStatus.COMPLETED:
            log.warning("shared step %s (%s) failed; the runs that need it fail with its error: %s", step.label,
                        step.key, last_line(result.error, "?"))
        with self.db.session() as session:
            store.add_shared_step(session, step, result)

    def fail_unplaceable(self, candidates: list[RunSpec]) -> None:
        """Runs that can never be placed fail now, with the reason, not hours into the sweep."""
        self.unplaceable.update(self.executor.unplaceable(candidates) if candidates else {})
        for run in candidates:
            if run.key in self.unplaceable and self.claim(run):
                self.finished(run, RunResult.failure(run.key, f"ResourcesUnavailable: {self.unplaceable[run.key]}"))

    def execute(self, candidates: list[RunSpec]) -> list[RunSpec]:
        """Hand the claimable candidates to the executor; the ones another live driver holds."""
        busy: list[RunSpec] = []

        def claimed() -> Iterator[RunSpec]:
            for run in candidates:
                if run.key not in self.unplaceable:
                    if self.claim(run):
                        yield run
                    else:
                        busy.append(run)

        for run, result in self.executor.execute(claimed(), self.display.progress, on_retry=self.retried,
                                                 shared=self.shared):
            self.finished(run, result)
        if not busy:
            return []
        with self.db.session() as session:
            statuses = store.run_statuses(session, [r.key for r in busy])
        done = [r for r in busy if statuses.get(r.key) in (RunStatus.COMPLETED, RunStatus.FAILED)]
        self.outcome.elsewhere += done
        return [r for r in busy if r not in done]

    # --- the events -----------------------------------------------------------------------------
    def claim(self, run: RunSpec) -> bool:
        stale_before = utcnow() - timedelta(seconds=self.stale_after)
        with self.db.session() as session:
            ok = store.claim(session, self.sweep_id, run, self.owner, rerun_failed=self.rerun_failed,
                             stale_before=stale_before, owner_is_dead=owner_is_dead)
        if ok:
            self.held.add(run.key)
        return ok

    def finished(self, run: RunSpec, result: RunResult) -> None:
        with self.db.session() as session:
            stored = store.record(session, run, result, self.owner)
        self.held.discard(run.key)
        if stored is None:
            log.warning("run %s (%s) was taken over by another driver; this result is dropped", run.label, run.key)
            self.outcome.dropped.append(run)
        elif result.status == RunStatus.COMPLETED:
            self.outcome.completed.append(run)
        else:
            self.outcome.failed.append((run, result.error or "unknown error"))
        self.display.finished(run, result)

    def retried(self, run: RunSpec, reason: str) -> None:
        log.warning("run %s (%s) retried: %s", run.label, run.key, reason)
        self.outcome.retried.append((run, reason))
        with self.db.session() as session:
            store.add_attempt(session, run.key, self.owner)


def run_sweep(spec: SweepSpec, db: Database, executor: Executor, *, path: str | None = None, rerun_failed: bool = False,
              display: Display | None = None, stale_after: float = STALE_AFTER, share: bool = True) -> SweepOutcome:
    """Run every run of ``spec`` not yet completed (see ``SweepDriver``); ``share=False``: every run
    computes everything itself."""
    return SweepDriver(spec, db, executor, path=path, rerun_failed=rerun_failed, display=display,
                       stale_after=stale_after, share=share).run()
