"""A run's memory in the database (``run_memory``, ``runs.placement``; schema 0008): stored with its
result, a failed run's too; replaced when the run is stored again; cleared when it is claimed again.
On SQLite and PostgreSQL (the ``db`` fixture)."""

from __future__ import annotations

from sqlalchemy import select

from tests.support.stored_runs import claim, record, tiny_sweep
from twossp.contracts import RunResult, RunStatus
from twossp.db.database import Database
from twossp.db.models import Run
from twossp.plan import RunSpec, plan_sweep
from twossp.spec import SweepSpec

GiB = 2**30
#: what a run split over two GPUs measured, with the plan's estimate per device
MEASURED = [("plan", "cuda:0", "estimate_bytes", 40 * GiB), ("plan", "cuda:1", "estimate_bytes", 38 * GiB),
            ("load", "cuda:0", "peak_cuda_allocated_bytes", 30 * GiB),
            ("load", "cuda:1", "peak_cuda_allocated_bytes", 29 * GiB),
            ("load", "cpu", "peak_rss_bytes", 3 * GiB),
            ("stage 1", "cuda:0", "peak_cuda_allocated_bytes", 36 * GiB)]


def stored(db: Database, key: str) -> tuple[str | None, list[tuple[str, str, str, int]]]:
    """The run's placement and its memory rows, in the order stored."""
    with db.session() as session:
        run = session.scalars(select(Run).where(Run.key == key)).one()
        return run.placement, [(m.phase, m.device, m.metric, m.bytes) for m in run.memory]


def two_ssp(name: str) -> tuple[SweepSpec, RunSpec]:
    spec = tiny_sweep(name)
    (run,) = [r for r in plan_sweep(spec) if r.method.name == "2ssp"]
    return spec, run


def test_a_completed_run_stores_its_placement_and_memory(db: Database) -> None:
    spec, run = two_ssp("memory")
    assert claim(db, spec, run)
    record(db, run, RunResult(key=run.key, status=RunStatus.COMPLETED, placement="split 2x cuda", memory=MEASURED))
    assert stored(db, run.key) == ("split 2x cuda", MEASURED)


def test_a_failed_run_stores_what_it_measured(db: Database) -> None:
    spec, run = two_ssp("memory-failed")
    assert claim(db, spec, run)
    measured = MEASURED[:3]  # it ran out of memory loading the model onto cuda:1
    record(db, run, RunResult(key=run.key, status=RunStatus.FAILED, error="OutOfMemory: cuda:1 ran out of memory",
                              placement="split 2x cuda", memory=measured))
    assert stored(db, run.key) == ("split 2x cuda", measured)


def test_storing_a_run_again_replaces_its_memory_and_claiming_it_clears_it(db: Database) -> None:
    spec, run = two_ssp("memory-again")
    assert claim(db, spec, run)
    record(db, run, RunResult(key=run.key, status=RunStatus.FAILED, error="OutOfMemory",
                              placement="single", memory=MEASURED[2:4]))
    assert claim(db, spec, run)  # rerun: nothing of the failed attempt is left
    assert stored(db, run.key) == (None, [])
    again = [("load", "cuda:0", "peak_cuda_allocated_bytes", 31 * GiB), ("stage 1", "cpu", "peak_rss_bytes", GiB)]
    record(db, run, RunResult(key=run.key, status=RunStatus.COMPLETED, placement="stream from disk", memory=again))
    assert stored(db, run.key) == ("stream from disk", again)


def test_a_peak_measured_twice_keeps_its_largest_value(db: Database) -> None:
    """Two measurements of one (phase, device, metric), an evaluation repeated say, are one row:
    the table holds one of each, and a peak is the largest."""
    spec, run = two_ssp("memory-twice")
    assert claim(db, spec, run)
    twice = [("eval eval.txt", "cpu", "peak_rss_bytes", 5), ("tasks", "cpu", "peak_rss_bytes", 4),
             ("eval eval.txt", "cpu", "peak_rss_bytes", 7), ("eval eval.txt", "cpu", "peak_rss_bytes", 6)]
    record(db, run, RunResult(key=run.key, status=RunStatus.COMPLETED, memory=twice))
    assert stored(db, run.key) == (None, [("eval eval.txt", "cpu", "peak_rss_bytes", 7),
                                          ("tasks", "cpu", "peak_rss_bytes", 4)])
