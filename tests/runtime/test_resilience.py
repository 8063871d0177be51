"""Sweeps that survive their drivers: a driver killed with SIGKILL leaves nothing half-written and
the next `sweep run` finishes the work without recomputing completed runs; two drivers on one
database share a sweep and never run a cell twice; `sweep cancel` stops a running driver cleanly.

Every driver here is a real `twossp sweep run` process (in-process executor, so no Ray start) on
the tiny on-disk checkpoint, against SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.support.tiny_checkpoint import paragraphs
from twossp.plan import plan_sweep
from twossp.spec import load_sweep

TWOSSP = [str(Path(sys.executable).with_name("twossp"))]  # the console script


def start(sweep_file: Path, url: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TERM": "dumb"}
    return subprocess.Popen([*TWOSSP, "sweep", "run", str(sweep_file), "--db", url, "--executor", "local", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return out


def rows(url: str) -> dict[str, dict]:
    """Every run row with its scores, read with plain SQL (the public interface)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            runs = {r.key: dict(r._mapping) for r in conn.execute(text(
                "select key, status, attempts, finished_at, owner from runs"))}
            for r in runs.values():
                r["scores"] = {}
            for key, dataset, value in conn.execute(text(
                    "select runs.key, scores.dataset, scores.value from scores join runs on runs.id = scores.run_id")):
                runs[key]["scores"][dataset] = value
            return runs
    finally:
        engine.dispose()


def statuses(url: str) -> dict[str, str]:
    try:
        return {k: r["status"] for k, r in rows(url).items()}
    except Exception:  # noqa: BLE001 - the schema may not exist yet while the driver starts
        return {}


@pytest.fixture
def sweep_file(tiny_checkpoint, tmp_path: Path) -> Path:
    """11 runs: dense, then 2SSP at two sparsities x five seeds."""
    return tiny_checkpoint.write_sweep(tmp_path / "resilience.yaml", "resilience", seeds=[0, 1, 2, 3, 4])


def test_sigkill_mid_sweep_then_rerun_equals_an_uninterrupted_sweep(sweep_file: Path, tmp_path: Path,
                                                                     db_url: str) -> None:
    keys = sorted(r.key for r in plan_sweep(load_sweep(str(sweep_file))))
    assert len(keys) == 11
    reference = f"sqlite:///{tmp_path / 'reference.db'}"
    out = finish(start(sweep_file, reference))
    assert "11 completed" in out, out

    proc = start(sweep_file, db_url, "--stale-after", "1")
    in_flight: set[str] = set()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        now = statuses(db_url)
        done = [k for k, s in now.items() if s == "completed"]
        running = {k for k, s in now.items() if s == "running"}
        if done and running:  # at least one run stored, another one claimed and computing
            proc.send_signal(signal.SIGKILL)
            in_flight = running
            break
        time.sleep(0.01)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the sweep finished before it could be killed"

    killed = rows(db_url)
    completed_before = {k: r["finished_at"] for k, r in killed.items() if r["status"] == "completed"}
    assert 0 < len(completed_before) < 11
    for key, r in killed.items():  # nothing half-written: scores only on completed rows
        assert bool(r["scores"]) == (r["status"] == "completed"), (key, r)
    left_running = {k for k, r in killed.items() if r["status"] == "running"}
    assert left_running and left_running <= in_flight | set(completed_before)

    time.sleep(1.5)  # the dead driver's heartbeat is now stale (--stale-after 1)
    out = finish(start(sweep_file, db_url, "--stale-after", "1"))
    assert f"{11 - len(completed_before)} completed, 0 failed, {len(completed_before)} skipped" in out, out

    final, ref = rows(db_url), rows(reference)
    assert sorted(final) == keys == sorted(ref)
    for key in keys:
        assert final[key]["status"] == "completed"
        assert final[key]["scores"] == ref[key]["scores"], key  # the same numbers, as if never interrupted
        if key in completed_before:  # not recomputed: one attempt, the same finish time
            assert final[key]["attempts"] == 1 and final[key]["finished_at"] == completed_before[key]
        elif key in left_running:  # started by the killed driver, started again by the second
            assert final[key]["attempts"] == 2
        else:
            assert final[key]["attempts"] == 1


def test_two_drivers_on_one_database_run_each_cell_exactly_once(sweep_file: Path, db_url: str) -> None:
    keys = sorted(r.key for r in plan_sweep(load_sweep(str(sweep_file))))
    # both start on an empty database: both try to create the schema; one does, the other waits for it
    first, second = start(sweep_file, db_url), start(sweep_file, db_url)
    outputs = [finish(first), finish(second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    final = rows(db_url)
    assert sorted(final) == keys
    assert {r["status"] for r in final.values()} == {"completed"}
    assert {r["attempts"] for r in final.values()} == {1}  # nobody computed a cell twice
    completed = [int(out.split(" completed")[0].split()[-1]) for out in outputs]
    assert sum(completed) == 11, outputs  # the two drivers' reports add up to the sweep


def test_sweep_cancel_stops_a_running_driver_and_releases_its_runs(tiny_checkpoint, tmp_path: Path,
                                                                     db_url: str) -> None:
    # runs long enough (hundreds of evaluation windows each) that the cancellation lands mid-sweep
    evaluation = tmp_path / "long-eval.txt"
    evaluation.write_text("\n\n".join(paragraphs(200, seed=2)) + "\n", encoding="utf-8")
    sweep_file = tiny_checkpoint.write_sweep(
        tmp_path / "resilience.yaml", "resilience", seeds=[0, 1, 2, 3, 4],
        evaluation={"perplexity": [{"path": str(evaluation)}], "seq_len": 16, "max_windows": 400})
    proc = start(sweep_file, db_url, "--stale-after", "2")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and "completed" not in statuses(db_url).values():
        assert proc.poll() is None, finish(proc)
        time.sleep(0.02)
    cancel = subprocess.run([*TWOSSP, "sweep", "cancel", "resilience", "--db", db_url],
                            capture_output=True, text=True, timeout=120)
    assert cancel.returncode == 0 and "cancel requested for sweep 'resilience'" in cancel.stdout, cancel
    out = finish(proc)
    if proc.returncode == 0:
        pytest.skip("the sweep finished before the cancellation reached it")
    assert proc.returncode == 130 and "cancelled" in out, out
    now = statuses(db_url)
    assert "running" not in now.values()  # released, not left for the stale detector
    assert set(now.values()) <= {"completed", "pending"}  # a run in flight when cancelled is pending again
    assert list(now.values()).count("completed") < 11  # it stopped: later runs were never claimed
    out = finish(start(sweep_file, db_url))  # a new `sweep run` clears the request and finishes
    assert set(statuses(db_url).values()) == {"completed"}, out
