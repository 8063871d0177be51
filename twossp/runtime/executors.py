"""Executors: where runs execute. ``RayExecutor`` (the default) starts a local Ray cluster bound to
loopback, or attaches to an existing one; ``LocalExecutor`` runs in-process for debugging and tests.
Both yield ``(run, result)`` as runs finish and report progress through ``on_progress`` in the
driver's thread; neither touches the database."""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterable, Iterator

from twossp.plan import RunSpec
from twossp.runtime.worker import RunResult, execute_run

OnProgress = Callable[[str, str, int, int], None]  # run key, phase, done, total


class LocalExecutor:
    name = "local"

    def execute(self, runs: Iterable[RunSpec], on_progress: OnProgress) -> Iterator[tuple[RunSpec, RunResult]]:
        for run in runs:
            yield run, execute_run(run, progress=lambda phase, done, total, k=run.key: on_progress(k, phase, done, total))

    def close(self) -> None:
        pass


def _ray_task(run_json: dict[str, Any], board: Any) -> RunResult:
    """Body of the Ray task: rebuild the spec, run it, stream progress to the driver's board."""
    import torch

    run = RunSpec.model_validate(run_json)
    if not run.runtime.threads:
        # Ray sets OMP_NUM_THREADS to the task's CPUs; torch must follow it explicitly.
        torch.set_num_threads(max(1, int(run.model.cpus)))
    last: dict[str, int] = {}

    def progress(phase: str, done: int, total: int) -> None:
        if last.get(phase) != done:
            last[phase] = done
            board.put.remote(run.key, phase, done, total)

    return execute_run(run, progress)


class _ProgressBoard:
    """A tiny actor the workers push progress events into; the driver drains it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, int, int]] = []

    def put(self, key: str, phase: str, done: int, total: int) -> None:
        self.events.append((key, phase, done, total))

    def drain(self) -> list[tuple[str, str, int, int]]:
        events, self.events = self.events, []
        return events


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        self.address, self.num_cpus = address, num_cpus
        self._ray = None
        self._started = False

    def _connect(self):
        """Start (or attach to) Ray on first use, so a sweep with nothing to run starts nothing."""
        if self._ray is not None:
            return self._ray
        if not self.address:
            # A private single-node cluster with every listener on loopback. Ray reads this flag
            # when it is first imported, so it is set before the import.
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray

        if not ray.is_initialized():
            if self.address:
                ray.init(address=self.address, log_to_driver=False)
            else:
                ray.init(num_cpus=self.num_cpus or os.cpu_count(), include_dashboard=False,
                         log_to_driver=False, logging_level=logging.ERROR)
                self._started = True
        self._ray = ray
        self._task = ray.remote(_ray_task)
        self._board_cls = ray.remote(num_cpus=0)(_ProgressBoard)
        return ray

    def unsatisfiable(self, run: RunSpec) -> str | None:
        """Why no node of the cluster could ever run ``run``, or None."""
        total = self._connect().cluster_resources()
        for resource, need in (("CPU", run.model.cpus), ("GPU", run.model.gpus)):
            if need and total.get(resource, 0) < need:
                return (f"run needs {need:g} {resource} but the Ray cluster has {total.get(resource, 0):g}; "
                        f"lower `{resource.lower()}s` for this model or attach a bigger cluster with --address")
        return None

    def execute(self, runs: Iterable[RunSpec], on_progress: OnProgress) -> Iterator[tuple[RunSpec, RunResult]]:
        runs = list(runs)
        if not runs:
            return
        ray = self._connect()
        board = self._board_cls.remote()
        pending: dict[Any, RunSpec] = {}
        for run in runs:
            reason = self.unsatisfiable(run)
            if reason:
                yield run, RunResult(key=run.key, status="failed", error=f"ResourcesUnavailable: {reason}")
                continue
            options: dict[str, Any] = {"num_cpus": run.model.cpus, "num_gpus": run.model.gpus}
            if run.model.gpus:
                options["max_calls"] = 1  # a fresh worker per GPU run: memory goes back between runs
            pending[self._task.options(**options).remote(run.model_dump(mode="json"), board)] = run
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                for event in ray.get(board.drain.remote()):
                    on_progress(*event)
                for ref in done:
                    run = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - the worker or its node died: record it
                        result = RunResult(key=run.key, status="failed", error=f"{type(exc).__name__}: {exc}")
                    yield run, result
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            ray.kill(board)

    def close(self) -> None:
        if self._started and self._ray is not None:
            self._ray.shutdown()
