"""A Ray worker node lost in the middle of a sweep (issue 4): the run it held is retried on the
other node, and every run ends ``completed`` exactly once in the database.

A real three-node cluster on loopback (``ray.cluster_utils.Cluster``): a head without the custom
resource, and two worker nodes with one ``fake_gpu`` each, standing in for one GPU per machine. The
sweep's model asks for one ``fake_gpu``, so exactly one run is in flight on each worker node. Once
both are evaluating, one worker node is removed; ``RayExecutor`` must re-submit the lost run itself
and the driver must count the extra attempt and log which run was retried.

Slow (about a minute on 2 cores): each worker spends ~10-20 s importing torch and
transformers, and the runs are made long enough (thousands of short evaluation windows of the tiny
model) that the removed node surely holds a run that is not about to finish.
"""

from __future__ import annotations

import json
import os

# Ray reads this when it is first imported: every listener binds to 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import logging
import shutil
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import ray
import yaml
from ray.cluster_utils import Cluster
from sqlalchemy import select

from tests.support.tiny_checkpoint import paragraphs
from twossp.db import store
from twossp.db.models import Run
from twossp.db.database import Database
from twossp.plan import RunSpec, plan_sweep
from twossp.runtime.driver import SweepDriver, run_sweep
from twossp.runtime.executors import LocalExecutor, RayExecutor
from twossp.contracts import RunResult
from twossp.spec import parse_sweep

pytestmark = pytest.mark.slow

#: Evaluation windows per run: ~2-4 ms each (one progress event apiece), so a run evaluates for
#: several seconds and the node removed after both runs started evaluating still holds its run.
WINDOWS = 2500
#: If anything hangs (a lost run never retried, a queue that never drains), cancel the sweep
#: through the product's own mechanism rather than hanging the test session.
WATCHDOG_S = 300.0


class InFlightDisplay:
    """Records progress per run key, and says when two runs are evaluating at the same time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.evaluating: set[str] = set()
        self.finished_keys: list[str] = []
        self.first_event: dict[str, float] = {}
        self.finished_at: dict[str, float] = {}
        self.two_in_flight = threading.Event()

    def start(self, runs: list[RunSpec], statuses: dict[str, str]) -> None: ...

    def progress(self, key: str, phase: str, done: int, total: int) -> None:
        with self.lock:
            self.first_event.setdefault(key, time.monotonic())
            if phase.startswith("eval") and done < total // 2:
                self.evaluating.add(key)
            if len(self.evaluating - set(self.finished_keys)) >= 2:
                self.two_in_flight.set()

    def finished(self, run: RunSpec, result: RunResult) -> None:
        with self.lock:
            self.finished_keys.append(run.key)
            self.finished_at[run.key] = time.monotonic()

    def stop(self) -> None: ...


def _processes_mentioning(text: str) -> list[str]:
    """Live processes whose command line mentions ``text`` (this test's Ray temp dir)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{pid}: {cmdline[:160]}")
    return found


def _worker_node_holding_the_progress_board(cluster: Cluster):
    """The worker node where RayExecutor's progress-board actor lives, if it is on one: the worst
    node to lose, as every run reports progress through it."""
    for actor in ray._private.state.actors().values():  # no public API without the dashboard
        if actor["ActorClassName"] == "_ProgressBoard" and actor["State"] == "ALIVE":
            return next((n for n in cluster.worker_nodes if n.node_id == actor["Address"]["NodeID"]), None)
    return None


@pytest.fixture
def cluster(monkeypatch):
    """Head (no ``fake_gpu``) + two worker nodes with one ``fake_gpu`` and one CPU each, on loopback.
    Ray's socket paths must stay under 107 characters, so its temp dir is short and under /tmp."""
    # The nodes and the driver must agree on authentication. RayExecutor asks for token auth when
    # attaching by address (setdefault), but this process read Ray's auth mode when it imported ray,
    # before anything could set it; so the whole cluster runs without auth, like this process.
    # (A driver in token mode attached to a cluster without auth gets ActorDiedError on its
    # progress board.)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    # Cluster() records the head's address in Ray's default temp dir, which a fresh machine lacks.
    os.makedirs(ray._common.utils.get_default_ray_temp_dir(), exist_ok=True)
    small = {"object_store_memory": 100 * 1024 * 1024}
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "temp_dir": temp_dir,
                                                      "include_dashboard": False, **small})
    try:
        for _ in range(2):
            c.add_node(num_cpus=1, resources={"fake_gpu": 1}, **small)
        c.wait_for_nodes()
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
        deadline = time.monotonic() + 30
        while _processes_mentioning(temp_dir) and time.monotonic() < deadline:
            time.sleep(0.5)
        leftover = _processes_mentioning(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not leftover, "Ray processes left running:\n" + "\n".join(leftover)


@pytest.fixture
def db(tmp_path):
    with Database(f"sqlite:///{tmp_path / 'results.db'}") as database:
        yield database


def test_a_worker_node_lost_mid_sweep_retries_its_run_and_every_run_completes_once(
        cluster, db, tiny_checkpoint, tmp_path, caplog) -> None:
    evaluation = tmp_path / "long-eval.txt"
    evaluation.write_text("\n\n".join(paragraphs(400, seed=2)) + "\n", encoding="utf-8")
    data = tiny_checkpoint.sweep(
        "node-lost",
        models=[{"path": str(tiny_checkpoint.model_dir), "cpus": 1, "resources": {"fake_gpu": 1}}],
        seeds=[0, 1, 2],
        evaluation={"perplexity": [{"path": str(evaluation)}], "seq_len": 16, "max_windows": WINDOWS},
        runtime={"device": "cpu", "dtype": "float32", "threads": 1},
    )
    spec = parse_sweep(yaml.safe_dump(data), "node-lost.yaml")
    planned = plan_sweep(spec)
    assert len(planned) == 7  # dense + 2SSP x 2 sparsities x 3 seeds

    display = InFlightDisplay()
    sweep_over = threading.Event()
    removal: dict[str, object] = {}

    def remove_a_worker_node_once_two_runs_are_in_flight() -> None:
        try:
            if not display.two_in_flight.wait(timeout=WATCHDOG_S) or sweep_over.is_set():
                return
            with db.session() as session:
                removal["running"] = set(session.scalars(select(Run.key).where(Run.status == "running")))
            with display.lock:
                removal["in_flight"] = display.evaluating - set(display.finished_keys)
            # Either worker node holds a run; prefer the one that also holds the progress board.
            board_node = _worker_node_holding_the_progress_board(cluster)
            removal["at"] = time.monotonic()
            cluster.remove_node(board_node or next(iter(cluster.worker_nodes)))
            removal["took"] = time.monotonic() - removal["at"]
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            removal["error"] = exc

    def cancel_if_hung() -> None:
        with db.session() as session:
            store.request_cancel(session, spec.name)

    remover = threading.Thread(target=remove_a_worker_node_once_two_runs_are_in_flight, daemon=True)
    watchdog = threading.Timer(WATCHDOG_S, cancel_if_hung)
    remover.start()
    watchdog.start()
    started = time.monotonic()
    try:
        # The driver stays in the main thread: its heartbeat cancels a sweep by interrupting it.
        with caplog.at_level(logging.WARNING, logger="twossp.driver"):
            outcome = run_sweep(spec, db, RayExecutor(address=cluster.address), path="node-lost.yaml",
                                display=display, stale_after=60)
    finally:
        watchdog.cancel()
        sweep_over.set()
        display.two_in_flight.set()  # release the remover if the sweep ended without it
        remover.join(timeout=60)
    elapsed = time.monotonic() - started

    assert "error" not in removal, f"removing the node failed: {removal['error']!r}"
    assert "at" in removal, "two runs were never in flight at once; no node was removed"
    in_flight = removal["in_flight"]
    assert len(in_flight) == 2 and in_flight <= removal["running"], removal

    # Every planned run completed exactly once: one row each, one result stored each.
    keys = [r.key for r in planned]
    assert outcome.failed == [] and outcome.dropped == [] and outcome.elsewhere == [], outcome.failed
    assert sorted(r.key for r in outcome.completed) == sorted(keys)
    assert Counter(display.finished_keys) == Counter(keys)
    with db.session() as session:
        rows = session.scalars(select(Run)).all()
        assert Counter(r.key for r in rows) == Counter(keys)
        assert {r.key: r.status for r in rows} == dict.fromkeys(keys, "completed")
        assert all(len(r.scores) == 1 and r.scores[0].value > 1 for r in rows)
        attempts = {r.key: r.attempts for r in rows}

    # The run on the removed node (and only that one) was retried, once, and the log names it.
    retried = [run.key for run, _ in outcome.retried]
    assert len(retried) == 1, outcome.retried
    assert set(retried) <= in_flight
    assert sum(attempts.values()) == len(keys) + len(retried), attempts
    for key in retried:
        assert attempts[key] == 1 + retried.count(key)
        messages = [r.getMessage() for r in caplog.records if r.name == "twossp.driver"]
        assert any(key in m and "retried" in m for m in messages), messages
    assert all(attempts[k] == 1 for k in keys if k not in retried), attempts

    run, why = outcome.retried[0]
    print(f"\nsweep {elapsed:.1f} s; a worker node removed {removal['at'] - started:.1f} s in "
          f"(took {removal['took']:.1f} s); retried {run.label} ({run.key}): {why}; it completed "
          f"{display.finished_at[run.key] - removal['at']:.1f} s after the removal")


def test_runs_no_node_can_hold_are_reported_at_plan_time_and_a_cluster_that_shrinks_fails_the_rest(
        cluster, db, tiny_checkpoint, tmp_path) -> None:
    """A model asking for two ``fake_gpu`` (each node has one) is reported by ``sweep plan
    --address`` and its runs fail before anything starts; the runs of the model asking for one fail
    with the reason once every node that had one is gone, instead of staying pending forever."""
    from click.testing import CliRunner

    from twossp.cli import main

    evaluation = tmp_path / "long-eval.txt"
    evaluation.write_text("\n\n".join(paragraphs(400, seed=2)) + "\n", encoding="utf-8")
    wide = tmp_path / "tiny-copy"  # other weights (keys name them), so its runs have their own keys
    shutil.copytree(tiny_checkpoint.model_dir, wide)
    config = json.loads((wide / "config.json").read_text())
    (wide / "config.json").write_text(json.dumps({**config, "twossp_test_copy": True}))
    sweep_file = tiny_checkpoint.write_sweep(
        tmp_path / "shrink.yaml", "shrink",
        models=[{"path": str(tiny_checkpoint.model_dir), "cpus": 1, "resources": {"fake_gpu": 1}},
                {"path": str(wide), "cpus": 1, "resources": {"fake_gpu": 2}}],
        evaluation={"perplexity": [{"path": str(evaluation)}], "seq_len": 16, "max_windows": WINDOWS},
        runtime={"device": "cpu", "dtype": "float32", "threads": 1},
    )
    spec = parse_sweep(sweep_file.read_text(), str(sweep_file))
    planned = plan_sweep(spec)
    narrow_keys = {r.key for r in planned if r.model.path == str(tiny_checkpoint.model_dir)}
    wide_keys = {r.key for r in planned if r.model.path == str(wide)}
    assert len(narrow_keys) == len(wide_keys) == 3

    shown = CliRunner().invoke(main, ["sweep", "plan", str(sweep_file), "--db", db.url, "--address", cluster.address])
    assert shown.exit_code == 2, shown.output  # runs that cannot succeed
    flat = " ".join(shown.output.split())
    assert f"3 run(s) of tiny-copy can never be placed on the Ray cluster at {cluster.address}" in flat, flat
    assert "needs 1 CPU, 2 fake_gpu on one node" in flat and "closest has 1 CPU, 1 fake_gpu" in flat, flat
    assert "of tiny-llama can never" not in flat
    assert not ray.is_initialized()  # plan detached from the cluster

    class OrderedDisplay(InFlightDisplay):
        def __init__(self) -> None:
            super().__init__()
            self.order: list[tuple[str, str]] = []  # (event, run key) in the driver's order

        def progress(self, key: str, phase: str, done: int, total: int) -> None:
            self.order.append(("progress", key))
            super().progress(key, phase, done, total)

        def finished(self, run: RunSpec, result: RunResult) -> None:
            self.order.append(("finished", run.key))
            super().finished(run, result)

    display = OrderedDisplay()
    sweep_over = threading.Event()

    def remove_every_worker_node_once_two_runs_are_in_flight() -> None:
        if display.two_in_flight.wait(timeout=WATCHDOG_S) and not sweep_over.is_set():
            for node in list(cluster.worker_nodes):
                cluster.remove_node(node)

    remover = threading.Thread(target=remove_every_worker_node_once_two_runs_are_in_flight, daemon=True)
    def cancel_if_hung() -> None:
        with db.session() as session:
            store.request_cancel(session, spec.name)

    watchdog = threading.Timer(WATCHDOG_S, cancel_if_hung)
    remover.start()
    watchdog.start()
    try:
        outcome = run_sweep(spec, db, RayExecutor(address=cluster.address), path=str(sweep_file), display=display,
                            stale_after=60)
    finally:
        watchdog.cancel()
        sweep_over.set()
        display.two_in_flight.set()
        remover.join(timeout=60)

    errors = dict((run.key, error) for run, error in outcome.failed)
    assert outcome.completed == [] and set(errors) == narrow_keys | wide_keys, outcome
    # the wide runs failed first, before any run reported progress
    first_progress = next(i for i, (event, _) in enumerate(display.order) if event == "progress")
    assert {key for _, key in display.order[:first_progress]} == wide_keys
    for key in wide_keys:
        assert errors[key].startswith("ResourcesUnavailable: a run needs 1 CPU, 2 fake_gpu on one node"), errors[key]
    for key in narrow_keys:  # in flight on a removed node, or waiting for one: both say why
        assert errors[key].startswith("ResourcesUnavailable:") and "1 fake_gpu on one node" in errors[key], errors[key]
    with db.session() as session:
        rows = {r.key: r for r in session.scalars(select(Run)).all()}
        assert {r.status for r in rows.values()} == {"failed"}
        assert all(rows[k].error.startswith("ResourcesUnavailable") for k in rows)


def _worker_node_running(cluster: Cluster, title: str):
    """The worker node whose raylet is an ancestor of the process Ray titled ``title`` (a worker
    executing that task), if one is running."""
    raylets = {node.all_processes["raylet"][0].process.pid: node for node in cluster.worker_nodes}
    for pid in os.listdir("/proc"):
        try:
            if not pid.isdigit() or not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(title.encode()):
                continue
            current = int(pid)
            while current > 1:
                if current in raylets:
                    return raylets[current]
                current = int(Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return None


class StepDisplay(InFlightDisplay):
    """Also says when the shared step has done part of its work."""

    def __init__(self) -> None:
        super().__init__()
        self.step_running = threading.Event()

    def progress(self, key: str, phase: str, done: int, total: int) -> None:
        super().progress(key, phase, done, total)
        if phase.startswith("shared: stage 1") and total // 20 <= done < total // 2:
            self.step_running.set()


def test_a_worker_node_lost_during_a_shared_step_retries_the_step_and_its_runs_take_its_result(
        cluster, db, tiny_checkpoint, tmp_path, caplog) -> None:
    """Two 2SSP runs share their stage-1 scores. The node computing them is removed halfway: the step
    is re-submitted on the other node, the runs that waited for it take the new result, and every run
    completes once, with the numbers a run computing everything itself gives."""
    calibration = tmp_path / "long-calibration.jsonl"
    calibration.write_text("".join(json.dumps({"text": p}) + "\n" for p in paragraphs(2500, seed=3)),
                           encoding="utf-8")
    data = tiny_checkpoint.sweep(
        "step-lost", methods=["2ssp"],
        models=[{"path": str(tiny_checkpoint.model_dir), "cpus": 1, "resources": {"fake_gpu": 1}}],
        calibration={"source": {"path": str(calibration)}, "samples": [4000], "seq_len": 16},
        runtime={"device": "cpu", "dtype": "float32", "threads": 1},
    )
    spec = parse_sweep(yaml.safe_dump(data), "step-lost.yaml")
    display = StepDisplay()
    removal: dict[str, object] = {}
    sweep_over = threading.Event()

    def remove_the_node_computing_the_step() -> None:
        try:
            if not display.step_running.wait(timeout=WATCHDOG_S) or sweep_over.is_set():
                return
            node = _worker_node_running(cluster, "ray::_ray_step")
            if node is None:
                removal["error"] = "no worker node runs the shared step"
                return
            removal["at"] = time.monotonic()
            cluster.remove_node(node)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            removal["error"] = exc

    remover = threading.Thread(target=remove_the_node_computing_the_step, daemon=True)
    watchdog = threading.Timer(WATCHDOG_S, lambda: _cancel(db, spec.name))
    remover.start()
    watchdog.start()
    driver = SweepDriver(spec, db, RayExecutor(address=cluster.address), path="step-lost.yaml", display=display,
                         stale_after=60)
    try:
        with caplog.at_level(logging.WARNING, logger="twossp.executors"):
            outcome = driver.run()
    finally:
        watchdog.cancel()
        sweep_over.set()
        display.step_running.set()
        remover.join(timeout=60)

    assert "error" not in removal, removal.get("error")
    assert "at" in removal, "the shared step was never seen running; no node was removed"
    assert outcome.failed == [] and len(outcome.completed) == 2, outcome.failed
    [(step, reason)] = driver.shared.retried
    assert step.kind == "ffn scores" and "retry 1 of 2" in reason
    assert any("shared step" in r.getMessage() and "retried" in r.getMessage() for r in caplog.records)
    [(computed, result)] = outcome.steps_computed
    assert computed.key == step.key and result.status == "completed"
    with db.session() as session:
        rows = session.scalars(select(Run)).all()
        assert {r.shared_step for r in rows} == {step.key}
        assert all(r.attempts == 1 for r in rows)  # the runs themselves never started before the step was done
        shared = {r.key: sorted((m.layer, m.attention_kept, m.ffn_width) for m in r.layer_masks) for r in rows}
        scores = {r.key: [s.value for s in r.scores] for r in rows}

    with Database(f"sqlite:///{tmp_path / 'alone.db'}") as alone:
        run_sweep(spec, alone, LocalExecutor(), share=False)
        with alone.session() as session:
            rows = session.scalars(select(Run)).all()
            assert {r.key: sorted((m.layer, m.attention_kept, m.ffn_width) for m in r.layer_masks)
                    for r in rows} == shared
            assert {r.key: [s.value for s in r.scores] for r in rows} == scores


def _cancel(db: Database, name: str) -> None:
    with db.session() as session:
        store.request_cancel(session, name)
