"""The run view's memory section (``run_memory``, ``runs.placement``): the peak per phase and device
with its metric, beside the plan's estimate for the device, and the placement in its title; the
JSON is the database's bytes. A run that measured nothing has no memory section. On SQLite and
PostgreSQL (the ``db`` fixture)."""

from __future__ import annotations

import json
from typing import Iterator

import pytest
from sqlalchemy import update

from tests.support.consoles import fixed_terminal, invoke
from tests.support.stored_runs import claim, record, tiny_sweep
from twossp.contracts import RunResult, RunStatus
from twossp.db.database import Database
from twossp.db.models import Run
from twossp.plan import RunSpec, plan_sweep

GiB, MiB = 2**30, 2**20
MEASURED = [("plan", "cuda:0", "estimate_bytes", 40 * GiB), ("plan", "cpu", "estimate_bytes", 4 * GiB),
            ("plan", "cuda:1", "estimate_bytes", 512 * MiB),
            ("load", "cuda:0", "peak_cuda_allocated_bytes", 30 * GiB), ("load", "cpu", "peak_rss_bytes", 3 * GiB),
            ("stage 1", "cuda:0", "peak_cuda_allocated_bytes", 36 * GiB),
            ("speed", "cpu", "peak_rss_lifetime_bytes", 700 * MiB)]

#: the section as the table shows it: measured rows in the order measured, each beside its device's
#: estimate; cuda:1, estimated but never measured, last
SECTION = """\
                          memory (placement: split 2x cuda)
 phase    device  metric                          peak  plan's estimate  of estimate
 ───────────────────────────────────────────────────────────────────────────────────
 load     cuda:0  peak_cuda_allocated_bytes  30.00 GiB        40.00 GiB          75%
 load     cpu     peak_rss_bytes              3.00 GiB         4.00 GiB          75%
 stage 1  cuda:0  peak_cuda_allocated_bytes  36.00 GiB        40.00 GiB          90%
 speed    cpu     peak_rss_lifetime_bytes    700.0 MiB         4.00 GiB          17%
 plan     cuda:1  estimate_bytes                     -        512.0 MiB            -
    plan's estimate: the peak the plan expected on the device over the whole run"""


@pytest.fixture(autouse=True, scope="module")
def terminal() -> Iterator[None]:
    with fixed_terminal(160):
        yield


def stored(db: Database, placement: str | None, memory: list) -> RunSpec:
    """The 2SSP run of a tiny sweep, completed with ``placement`` and ``memory``."""
    spec = tiny_sweep("memory-view")
    (run,) = [r for r in plan_sweep(spec) if r.method.name == "2ssp"]
    assert claim(db, spec, run)
    record(db, run, RunResult(key=run.key, status=RunStatus.COMPLETED, placement=placement, memory=memory,
                              timings={"load": 1.0}))
    return run


def section(output: str) -> str:
    """The memory section of the run view's table output, without blank lines and trailing spaces."""
    lines = [line.rstrip() for line in output.splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("memory"))
    end = next(i for i, line in enumerate(lines) if line.strip() == "scores")
    return "\n".join(lines[start:end])


def test_the_run_view_shows_peaks_beside_the_plans_estimate(db: Database) -> None:
    run = stored(db, "split 2x cuda", MEASURED)
    result = invoke("show", run.key, "--db", db.url)
    assert result.exit_code == 0, result.output
    assert section(result.output) == SECTION
    assert result.output.index(" timings") < result.output.index("memory (") < result.output.index(" scores")


def test_the_json_of_the_memory_section_is_the_database(db: Database) -> None:
    run = stored(db, "single", MEASURED)
    frames = json.loads(invoke("show", run.key, "--db", db.url, "--format", "json").output)["frames"]
    measured = [(p, d, m, b) for p, d, m, b in MEASURED if m != "estimate_bytes"]
    assert [(r["phase"], r["device"], r["metric"], r["bytes"]) for r in frames["memory"]] == [
        *measured, ("plan", "cuda:1", "estimate_bytes", None)]
    assert [r["estimate bytes"] for r in frames["memory"]] == [40 * GiB, 4 * GiB, 40 * GiB, 4 * GiB, 512 * MiB]
    assert frames["memory"][2]["of estimate"] == pytest.approx(0.9)


def test_placement_alone_is_shown_and_a_run_without_either_has_no_memory_section(db: Database) -> None:
    run = stored(db, "stream from disk", [])
    assert "memory (placement: stream from disk)" in invoke("show", run.key, "--db", db.url).output
    with db.session() as session:  # the same run, as stored before schema 0008: neither
        session.execute(update(Run).where(Run.key == run.key).values(placement=None))
    body = json.loads(invoke("show", run.key, "--db", db.url, "--format", "json").output)
    assert "memory" not in body["frames"] and "timings" in body["frames"]
