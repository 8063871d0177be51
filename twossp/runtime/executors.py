"""Executors: where runs execute. ``RayExecutor`` (the default) starts a local Ray cluster bound to
loopback, or attaches to an existing one; ``LocalExecutor`` runs in-process for debugging and tests.
Both yield ``(run, result)`` as runs finish and report progress through ``on_progress`` in the
driver's thread; neither touches the database.

Shared steps (``SharedWork``): the first run handed over that needs a step not yet done brings the
step with it. ``LocalExecutor`` computes it in-process before that run; ``RayExecutor`` submits it as
a task of its own and every run that needs it as a task taking its result as an argument, so Ray
starts them once it is there. Either way a finished step goes to ``SharedWork.finished`` (the driver
stores it) before a run that took it is yielded."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Protocol

from twossp.contracts import RunResult, RunStatus, StepResult
from twossp.plan import RunSpec, SharedPlan, StepSpec
from twossp.runtime.worker import execute_run, execute_step

log = logging.getLogger("twossp.executors")

OnProgress = Callable[[str, str, int, int], None]  # run key, phase, done, total


OnRetry = Callable[[RunSpec, str], None]                 # run, why it is retried

#: Retries of a run whose worker or node died (not of a run that raised: that is recorded as failed).
MAX_RETRIES = 2


@dataclass
class SharedWork:
    """The shared steps of the runs an executor is handed: the plan, the results already there (read
    from the database, or computed earlier in this sweep; failures included, so every dependent fails
    with the same error) and who is told when one finishes (the driver, which stores it)."""

    plan: SharedPlan
    done: dict[str, StepResult] = field(default_factory=dict)
    on_finished: Callable[[StepSpec, StepResult], None] | None = None
    retried: list[tuple[StepSpec, str]] = field(default_factory=list)

    def step_of(self, run: RunSpec) -> StepSpec | None:
        return self.plan.step_of(run)

    def finished(self, step: StepSpec, result: StepResult) -> None:
        self.done[step.key] = result
        if self.on_finished:
            self.on_finished(step, result)


class Executor(Protocol):
    name: str

    def unplaceable(self, runs: list[RunSpec]) -> dict[str, str]:
        """Run key -> why this executor can never run it (asked before anything runs)."""

    def execute(self, runs: Iterable[RunSpec], on_progress: OnProgress, on_retry: OnRetry | None = None,
                shared: SharedWork | None = None) -> Iterator[tuple[RunSpec, RunResult]]:
        """Pull runs from ``runs`` as they can start; yield each with its result as it finishes."""

    def close(self) -> None: ...


class LocalExecutor:
    """In-process, one run at a time; runs are pulled from ``runs`` only when the previous finished.
    A model's Ray resources (``gpus``, ``memory``, ...) do not apply here."""

    name = "local"

    def unplaceable(self, runs: list[RunSpec]) -> dict[str, str]:
        return {}

    def execute(self, runs: Iterable[RunSpec], on_progress: OnProgress, on_retry: OnRetry | None = None,
                shared: SharedWork | None = None) -> Iterator[tuple[RunSpec, RunResult]]:
        for run in runs:
            def progress(phase: str, done: int, total: int, key: str = run.key) -> None:
                on_progress(key, phase, done, total)

            step = shared.step_of(run) if shared else None
            if step is not None and step.key not in shared.done:
                shared.finished(step, execute_step(step, progress=lambda phase, done, total:
                                                   progress(f"shared: {phase}", done, total)))
            yield run, execute_run(run, progress=progress, shared=shared.done[step.key] if step else None)

    def close(self) -> None:
        pass


def _set_threads(model: Any, runtime: Any) -> None:
    """Ray sets OMP_NUM_THREADS to the task's CPUs; torch must follow it explicitly."""
    import torch

    if not runtime.threads:
        torch.set_num_threads(max(1, int(model.cpus)))


def _board_progress(board: Any, key: str, prefix: str = "") -> Callable[[str, int, int], None]:
    """A progress callback that streams each new count to the driver's board, under run ``key``."""
    last: dict[str, int] = {}

    def progress(phase: str, done: int, total: int) -> None:
        if last.get(phase) != done:
            last[phase] = done
            board.put.remote(key, prefix + phase, done, total)

    return progress


def _ray_task(run_json: dict[str, Any], board: Any, shared: StepResult | None = None) -> RunResult:
    """Body of a run's Ray task: rebuild the spec, run it, stream progress to the driver's board.
    ``shared``: the result of its shared step (Ray resolves the step task's reference first)."""
    run = RunSpec.model_validate(run_json)
    _set_threads(run.model, run.runtime)
    return execute_run(run, _board_progress(board, run.key), shared=shared)


def _ray_step(step_json: dict[str, Any], board: Any, report_as: str) -> StepResult:
    """Body of a shared step's Ray task; its progress shows under the first run waiting for it."""
    step = StepSpec.model_validate(step_json)
    _set_threads(step.model, step.runtime)
    return execute_step(step, _board_progress(board, report_as, "shared: "))


class _ProgressBoard:
    """A tiny actor the workers push progress events into; the driver drains it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, int, int]] = []

    def put(self, key: str, phase: str, done: int, total: int) -> None:
        self.events.append((key, phase, done, total))

    def drain(self) -> list[tuple[str, str, int, int]]:
        events, self.events = self.events, []
        return events


def _demand(run: RunSpec | StepSpec) -> dict[str, float]:
    """The Ray resources one run (or shared step) of ``run``'s model asks for."""
    need = {"CPU": run.model.cpus, "GPU": run.model.gpus, **run.model.resources}
    if run.model.memory:
        need["memory"] = float(run.model.memory)
    return {name: amount for name, amount in need.items() if amount}


def unsatisfiable(need: dict[str, float], nodes: list[dict[str, float]]) -> str | None:
    """Why no node in ``nodes`` (their total resources) can ever run a task needing ``need``, or None.
    A run is placed on one node: a cluster of two 1-GPU nodes cannot run a 2-GPU run."""
    if any(all(node.get(r, 0) >= amount for r, amount in need.items()) for node in nodes):
        return None
    wanted = ", ".join(f"{amount:g} {r}" for r, amount in need.items())
    # the closest node: the most of each asked amount, each resource counted up to what is asked
    best = max(nodes, key=lambda node: sum(min(node.get(r, 0) / a, 1) for r, a in need.items()), default={})
    has = ", ".join(f"{best.get(r, 0):g} {r}" for r in need) if nodes else "no alive node"
    return (f"a run needs {wanted} on one node, but no alive node of the Ray cluster has that "
            f"(the closest has {has}); lower the model's resources in the sweep or attach a cluster that has them "
            "(--address)")


def unplaceable(runs: Iterable[RunSpec], nodes: list[dict[str, float]],
                ignore: tuple[str, ...] = ()) -> dict[str, str]:
    """Run key -> why no node in ``nodes`` can ever run it, for the runs that cannot be placed;
    resources named in ``ignore`` are not checked."""
    reasons = {}
    for run in runs:
        need = {name: amount for name, amount in _demand(run).items() if name not in ignore}
        reason = unsatisfiable(need, nodes)
        if reason:
            reasons[run.key] = reason
    return reasons


def this_machine() -> dict[str, float]:
    """An upper bound of what the private local cluster (``RayExecutor()`` without an address) gets,
    without starting it or importing torch: this machine's CPUs and its total memory (Ray grants tasks
    less than that). A run asking for more can never be placed there; one asking less still may not
    be. GPUs are not counted here (that needs torch or Ray); ``RayExecutor.unplaceable`` counts them."""
    return {"CPU": float(os.cpu_count() or 1),
            "memory": float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))}


#: Ray errors meaning the run's worker process or node went away: the run itself did nothing wrong.
_LOST = ("NodeDiedError", "WorkerCrashedError", "LocalRayletDiedError", "ObjectLostError", "OwnerDiedError",
         "ObjectReconstructionFailedError", "RaySystemError")


class RayExecutor:
    """Runs on Ray: a private local cluster bound to loopback, or an existing cluster (``address``).

    Runs are pulled (and so claimed by the driver) only as the cluster can start them, so several
    drivers share the work. Ray's own retries are off: a run whose worker or node dies is re-submitted
    here, at most ``max_retries`` times, and reported through ``on_retry``; a run that raises is a
    failed result, never retried; a worker killed by Ray's memory monitor is a failed run that says so.
    """

    name = "ray"
    #: seconds between checks that every waiting run can still be placed (the cluster may shrink)
    recheck_every = 5.0

    def __init__(self, address: str | None = None, num_cpus: int | None = None, max_retries: int = MAX_RETRIES) -> None:
        self.address, self.num_cpus, self.max_retries = address, num_cpus, max_retries
        self._ray = None
        self._initialized = False  # whether this executor called ray.init (and so shuts it down)

    def _connect(self) -> Any:
        """Start (or attach to) Ray on first use, so a sweep with nothing to run starts nothing."""
        if self._ray is not None:
            return self._ray
        if not self.address:
            # A private single-node cluster with every listener on loopback. Ray reads this flag
            # when it is first imported, so it is set before the import.
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        elif self.address != "auto" and not self.address.startswith("ray://"):
            # Ray 2.60 authenticates with ~/.ray/auth_token; by explicit address the driver has to
            # be told to send it (by "auto" it finds out by itself).
            os.environ.setdefault("RAY_AUTH_MODE", "token")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray

        if not ray.is_initialized():
            self._initialized = True
            if self.address:
                ray.init(address=self.address, log_to_driver=False, logging_level=logging.ERROR)
            else:
                # address="local": always a new private cluster, even when another one on this
                # machine left its address behind (Ray would otherwise try to join that one)
                ray.init(address="local", num_cpus=self.num_cpus or os.cpu_count(), include_dashboard=False,
                         log_to_driver=False, logging_level=logging.ERROR)
        self._ray = ray
        self._task = ray.remote(_ray_task)
        self._step_task = ray.remote(_ray_step)
        # The board lives on the driver's node: on any other, losing that node would end the sweep.
        here = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=False)
        self._board_cls = ray.remote(num_cpus=0, scheduling_strategy=here)(_ProgressBoard)
        return ray

    def _nodes(self) -> list[dict[str, float]]:
        return [node["Resources"] for node in self._connect().nodes() if node.get("Alive")]

    def unsatisfiable(self, run: RunSpec) -> str | None:
        """Why no alive node of the cluster could ever run ``run``, or None."""
        return unsatisfiable(_demand(run), self._nodes())

    def unplaceable(self, runs: list[RunSpec]) -> dict[str, str]:
        """The runs no alive node of the cluster can hold (starts or attaches to the cluster)."""
        return unplaceable(runs, self._nodes())

    def capacity(self, run: RunSpec) -> int:
        """How many runs like ``run`` the alive nodes can hold at once (at least 1)."""
        need = _demand(run)
        return max(1, sum(int(min(node.get(r, 0) // a for r, a in need.items())) if need else 1
                          for node in self._nodes()))

    @staticmethod
    def _options(model: Any) -> dict[str, Any]:
        """The task options of a run or shared step of ``model``: its resources, no Ray retries."""
        options: dict[str, Any] = {"num_cpus": model.cpus, "num_gpus": model.gpus, "max_retries": 0}
        if model.memory:
            options["memory"] = int(model.memory)
        if model.resources:
            options["resources"] = dict(model.resources)
        if model.gpus:
            options["max_calls"] = 1  # a fresh worker per GPU task: memory goes back between tasks
        return options

    def _submit(self, run: RunSpec, board: Any, shared: Any = None) -> Any:
        return self._task.options(**self._options(run.model)).remote(run.model_dump(mode="json"), board, shared)

    def _submit_step(self, step: StepSpec, board: Any, report_as: str) -> Any:
        return self._step_task.options(**self._options(step.model)).remote(step.model_dump(mode="json"), board,
                                                                           report_as)

    def execute(self, runs: Iterable[RunSpec], on_progress: OnProgress, on_retry: OnRetry | None = None,
                shared: SharedWork | None = None) -> Iterator[tuple[RunSpec, RunResult]]:
        source = iter(runs)
        first = next(source, None)
        if first is None:
            return
        self._connect()
        batch = _RayBatch(self, source, first, on_progress, on_retry, shared or SharedWork(SharedPlan()))
        try:
            while True:
                yield from batch.pull()
                if not batch.pending and not batch.refill():
                    break
                yield from batch.poll()
                yield from batch.recheck()
        finally:
            batch.cancel()

    def close(self) -> None:
        """Stop the private cluster, or detach from the one attached to (unless Ray was already
        initialised in this process by someone else)."""
        if self._ray is not None and self._initialized:
            self._ray.shutdown()
        self._ray, self._initialized = None, False


def _lost_message(exc: Exception, retries: int) -> str:
    kind = type(exc).__name__
    first = (str(exc).strip().splitlines() or [""])[0]
    if kind == "OutOfMemoryError":
        return (f"OutOfMemory: the host ran out of memory and Ray's memory monitor killed the worker ({first}); "
                "give the model a larger `memory` in the sweep so fewer runs share a node")
    if kind in _LOST:
        return f"{kind}: the run's worker or node was lost after {retries} retries: {first}"
    return f"{kind}: {first}"


class _RayBatch:
    """The runs one ``RayExecutor.execute`` call has in flight, and its three moves: ``pull`` more
    runs as the cluster can start them, ``poll`` for progress and finished runs (re-submitting runs
    whose worker or node died), ``recheck`` that waiting runs can still be placed.

    A run with a shared step is submitted with the step's result as an argument: the reference of
    the step's task while it is in flight, and once it is done a reference the driver owns (``put``),
    so a run submitted later does not depend on the node that computed it. A step whose worker or
    node died is re-submitted like a run, and so are the runs that were waiting for it."""

    def __init__(self, executor: RayExecutor, source: Iterator[RunSpec], first: RunSpec, on_progress: OnProgress,
                 on_retry: OnRetry | None, shared: SharedWork) -> None:
        self.executor, self.ray = executor, executor._ray
        self.source, self.on_progress, self.on_retry, self.shared = source, on_progress, on_retry, shared
        self.board = executor._board_cls.remote()
        self.pending: dict[Any, tuple[RunSpec, int, Any]] = {}  # ref -> (run, retries so far, its step's ref)
        self.waiting: list[RunSpec] = [first]
        self.limit = executor.capacity(first)
        self.last_check = time.monotonic()
        self.steps: dict[str, Any] = {}                          # step key -> the reference runs take now
        self.step_tasks: dict[Any, tuple[StepSpec, int]] = {}    # step task in flight -> (step, retries)
        self.lost: set[Any] = set()                              # step task references whose task was lost

    def pull(self) -> Iterator[tuple[RunSpec, RunResult]]:
        """Take (and so claim) only as many runs as can start; submit them, or fail the ones no
        alive node can hold."""
        while len(self.pending) + len(self.waiting) < self.limit:
            nxt = next(self.source, None)
            if nxt is None:
                break
            self.waiting.append(nxt)
        for run in self.waiting:
            reason = self.executor.unsatisfiable(run)
            if reason:
                yield run, RunResult.failure(run.key, f"ResourcesUnavailable: {reason}")
                continue
            self._submit(run, 0)
            self.limit = self.executor.capacity(run)
        self.waiting = []

    def _submit(self, run: RunSpec, retries: int) -> None:
        step_ref = self._step_ref(run)
        self.pending[self.executor._submit(run, self.board, step_ref)] = (run, retries, step_ref)

    def _step_ref(self, run: RunSpec) -> Any:
        """The reference of the result of ``run``'s shared step (None: it has none); the step's task
        is submitted with its first run."""
        step = self.shared.step_of(run)
        if step is None:
            return None
        ref = self.steps.get(step.key)
        if ref in self.step_tasks and self.ray.wait([ref], timeout=0)[0]:
            self._step_done(ref)  # finished (or lost) meanwhile: take what replaced it
            ref = self.steps.get(step.key)
        if ref is None:
            if step.key in self.shared.done:
                ref = self.ray.put(self.shared.done[step.key])
            else:
                ref = self.executor._submit_step(step, self.board, run.key)
                self.step_tasks[ref] = (step, 0)
            self.steps[step.key] = ref
        return ref

    def _step_done(self, ref: Any) -> None:
        """A step task ended: its result goes to ``SharedWork`` (the driver stores it) and is put
        where later runs take it; a lost one is re-submitted (its waiting runs follow it)."""
        step, retries = self.step_tasks.pop(ref)
        try:
            result = self.ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - the step's worker or node died
            kind = type(exc).__name__
            self.lost.add(ref)  # the runs that took it are submitted again, to take what replaces it
            if kind in _LOST and retries < self.executor.max_retries and not self.executor.unsatisfiable(step):
                reason = f"{kind} (retry {retries + 1} of {self.executor.max_retries})"
                log.warning("shared step %s (%s) retried: %s", step.label, step.key, reason)
                self.shared.retried.append((step, reason))
                report_as = next((run.key for run, _, arg in self.pending.values() if arg is ref), step.key)
                new = self.executor._submit_step(step, self.board, report_as)
                self.step_tasks[new] = (step, retries + 1)
                self.steps[step.key] = new
                return
            result = StepResult(key=step.key, kind=step.kind, status=RunStatus.FAILED,
                                error=_lost_message(exc, retries))
        self.shared.finished(step, result)
        self.steps[step.key] = self.ray.put(result)

    def refill(self) -> bool:
        """Nothing in flight: wait for the next run, if there is one."""
        nxt = next(self.source, None)
        if nxt is not None:
            self.waiting.append(nxt)
        return nxt is not None

    def poll(self) -> Iterator[tuple[RunSpec, RunResult]]:
        if not self.pending:
            return
        self.ray.wait(list(self.pending) + list(self.step_tasks), num_returns=1, timeout=0.5)
        for event in self.ray.get(self.board.drain.remote()):
            self.on_progress(*event)
        if self.step_tasks:  # steps first: a run that took a step's result is yielded after the step
            ready, _ = self.ray.wait(list(self.step_tasks), num_returns=len(self.step_tasks), timeout=0)
            for ref in ready:
                self._step_done(ref)
        done, _ = self.ray.wait(list(self.pending), num_returns=len(self.pending), timeout=0)
        for ref in done:
            run, retries, step_ref = self.pending.pop(ref)
            try:
                result = self.ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - the worker or its node died
                if step_ref in self.lost:  # its step's task was lost: wait for the step's new task
                    self._submit(run, retries)
                    continue
                result = self._lost(run, retries, exc)
                if result is None:
                    continue  # re-submitted
            yield run, result

    def _lost(self, run: RunSpec, retries: int, exc: Exception) -> RunResult | None:
        """A run whose task raised a Ray error: re-submitted (None) or failed with the reason."""
        kind = type(exc).__name__
        unplaceable = self.executor.unsatisfiable(run) if kind in _LOST else None
        if kind in _LOST and retries < self.executor.max_retries and not unplaceable:
            if self.on_retry:
                self.on_retry(run, f"{kind} (retry {retries + 1} of {self.executor.max_retries})")
            self._submit(run, retries + 1)
            return None
        error = (f"ResourcesUnavailable: the cluster shrank ({kind}): {unplaceable}" if unplaceable
                 else _lost_message(exc, retries))
        return RunResult.failure(run.key, error)

    def recheck(self) -> Iterator[tuple[RunSpec, RunResult]]:
        """Every ``recheck_every`` seconds: fail the runs the (shrunken) cluster can no longer place."""
        if time.monotonic() - self.last_check <= self.executor.recheck_every:
            return
        self.last_check = time.monotonic()
        for ref, (run, _, _) in list(self.pending.items()):
            reason = self.executor.unsatisfiable(run)
            if reason:
                self.ray.cancel(ref, force=True)
                del self.pending[ref]
                yield run, RunResult.failure(run.key, f"ResourcesUnavailable: the cluster shrank: {reason}")

    def cancel(self) -> None:
        for ref in [*self.pending, *self.step_tasks]:
            self.ray.cancel(ref, force=True)
        self.ray.kill(self.board)
