"""Writes of the result database (twossp.db.store): claim -> record | release, one transaction each.

A run row is ``running`` while claimed, then ``completed`` with all its scores, timings and masks,
or ``failed`` with its error and no children; never anything in between.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from twossp.db import store
from twossp.db.models import LayerMaskRow, Run, Score, Sweep, Timing
from twossp.db.database import Database
from twossp.plan import RunSpec, plan_sweep
from twossp.prune.masks import LayerMask
from twossp.runtime.worker import RunResult
from twossp.spec import parse_sweep

SWEEP = """\
name: store-test
models:
  - path: /models/tiny
methods: [dense, 2ssp]
sparsities: [0.25, 0.5]
calibration: {source: {path: /data/calib.jsonl}, samples: [2], seq_len: 16}
evaluation: {perplexity: [{path: /data/eval.txt}], seq_len: 16}
"""

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
OWNER = "test-host:1:driver"


@pytest.fixture
def spec():
    return parse_sweep(SWEEP, "store-test.yaml", check_files=False)  # the paths are never read


@pytest.fixture
def runs(spec) -> list[RunSpec]:
    planned = plan_sweep(spec)
    assert [r.method.name for r in planned] == ["dense", "2ssp", "2ssp"]
    return planned


def claim_all(db: Database, spec, runs: list[RunSpec]) -> None:
    with db.session() as session:
        sweep = store.upsert_sweep(session, spec, "/sweeps/store-test.yaml")
        for run in runs:
            assert store.claim(session, sweep.id, run, OWNER, rerun_failed=True, stale_before=T0)


def completed(run: RunSpec, ppl: float = 12.5) -> RunResult:
    bits = np.zeros(8, dtype=bool)
    bits[[0, 3, 5]] = True
    mask = np.packbits(bits).tobytes()
    return RunResult(
        key=run.key, status="completed", started_at=T0, finished_at=T0 + timedelta(seconds=3),
        achieved_sparsity=0.25, params_dense=400, params_pruned=300,
        scores=[("eval.txt", "perplexity", ppl), ("other.txt", "perplexity", ppl + 1)],
        timings={"load": 0.5, "prune": 1.5},
        masks=[LayerMask(0, False, 8, mask), LayerMask(1, True, 8, mask)],
        details={"budget": {"num_attention_removed": 1, "ffn_keep": 3}},
        host="host", device="cpu", versions={"twossp": "0.1.0"},
    )


def failed(run: RunSpec, error: str = "DataUnavailable: model directory not found: /models/tiny") -> RunResult:
    return RunResult(key=run.key, status="failed", error=error, started_at=T0, finished_at=T0 + timedelta(seconds=1),
                     host="host")


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes (stored as UTC); PostgreSQL aware ones."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def row(db: Database, key: str) -> Run:
    with db.session() as session:
        found = session.scalar(select(Run).where(Run.key == key))
        assert found is not None
        session.expunge(found)
        return found


def children(db: Database, key: str) -> dict[str, int]:
    with db.session() as session:
        run_id = session.scalar(select(Run.id).where(Run.key == key))
        count = lambda table: session.scalar(  # noqa: E731
            select(func.count()).select_from(table).where(table.run_id == run_id))
        return {table.__tablename__: count(table) for table in (Score, Timing, LayerMaskRow)}


def test_claim_creates_running_rows_under_the_sweep(db: Database, spec, runs: list[RunSpec]) -> None:
    claim_all(db, spec, runs)
    with db.session() as session:
        sweep = session.scalar(select(Sweep))
        assert (sweep.name, sweep.path, sweep.spec["name"]) == ("store-test", "/sweeps/store-test.yaml", "store-test")
        rows = session.scalars(select(Run).order_by(Run.id)).all()
        assert [r.key for r in rows] == [r.key for r in runs]
        assert {r.status for r in rows} == {"running"}
        assert all(r.sweep_id == sweep.id and r.started_at is not None and r.finished_at is None for r in rows)
        dense, s25, s50 = rows
        assert (dense.method, dense.target_sparsity, dense.calibration_samples, dense.seed) == (
            "dense", 0.0, None, None)
        assert (s25.method, s25.target_sparsity, s25.calibration_samples, s25.seed) == ("2ssp", 0.25, 2, 0)
        assert s50.target_sparsity == 0.5
        assert s25.spec == runs[1].model_dump(mode="json")  # the resolved run spec is recorded


def test_upsert_sweep_updates_in_place(db: Database, spec) -> None:
    with db.session() as session:
        first = store.upsert_sweep(session, spec, "/a.yaml").id
    with db.session() as session:
        again = store.upsert_sweep(session, spec, "/b.yaml")
        assert again.id == first and again.path == "/b.yaml"
        assert session.scalar(select(func.count()).select_from(Sweep)) == 1


def test_record_completed_writes_everything_in_one_transaction(db: Database, spec, runs: list[RunSpec]) -> None:
    claim_all(db, spec, runs)
    run = runs[1]
    with db.session() as session:
        store.record(session, run, completed(run), OWNER)
    stored = row(db, run.key)
    assert stored.status == "completed" and stored.error is None
    assert as_utc(stored.started_at) == T0
    assert as_utc(stored.finished_at) == T0 + timedelta(seconds=3)
    assert (stored.achieved_sparsity, stored.params_dense, stored.params_pruned) == (0.25, 400, 300)
    assert (stored.host, stored.device, stored.versions) == ("host", "cpu", {"twossp": "0.1.0"})
    assert stored.details == {"budget": {"num_attention_removed": 1, "ffn_keep": 3}}
    assert children(db, run.key) == {"scores": 2, "timings": 2, "layer_masks": 2}
    with db.session() as session:
        r = session.scalar(select(Run).where(Run.key == run.key))
        assert sorted((s.dataset, s.metric, s.value) for s in r.scores) == [
            ("eval.txt", "perplexity", 12.5), ("other.txt", "perplexity", 13.5)]
        assert {t.phase: t.seconds for t in r.timings} == {"load": 0.5, "prune": 1.5}
        masks = [(m.layer, m.attention_kept, m.ffn_kept, m.ffn_width) for m in r.layer_masks]
        assert masks == [(0, False, 3, 8), (1, True, 3, 8)]
        bits = np.unpackbits(np.frombuffer(r.layer_masks[0].ffn_mask, dtype=np.uint8), count=8)
        assert np.flatnonzero(bits).tolist() == [0, 3, 5]
    # the other claimed runs are untouched
    assert {row(db, r.key).status for r in (runs[0], runs[2])} == {"running"}


def test_record_failed_stores_the_error_and_no_children(db: Database, spec, runs: list[RunSpec]) -> None:
    claim_all(db, spec, runs)
    run = runs[0]
    result = failed(run)
    result.scores = [("eval.txt", "perplexity", 1.0)]  # a failed result's partial numbers are not kept
    result.timings = {"load": 0.1}
    with db.session() as session:
        store.record(session, run, result, OWNER)
    stored = row(db, run.key)
    assert stored.status == "failed"
    assert stored.error == "DataUnavailable: model directory not found: /models/tiny"
    assert stored.finished_at is not None and stored.achieved_sparsity is None
    assert children(db, run.key) == {"scores": 0, "timings": 0, "layer_masks": 0}


def test_record_of_an_unclaimed_run_is_refused(db: Database, runs: list[RunSpec]) -> None:
    with pytest.raises(LookupError, match="never claimed"):
        with db.session() as session:
            store.record(session, runs[0], completed(runs[0]), OWNER)


def test_claiming_again_clears_what_the_previous_attempt_left(db: Database, spec, runs: list[RunSpec]) -> None:
    run = runs[1]
    claim_all(db, spec, [run])
    with db.session() as session:
        store.record(session, run, completed(run), OWNER)
    with db.session() as session:  # e.g. the run was later marked failed, and is now rerun
        session.scalar(select(Run).where(Run.key == run.key)).status = "failed"
    first_id = row(db, run.key).id

    claim_all(db, spec, [run])
    stored = row(db, run.key)
    assert stored.id == first_id  # the same row, reused
    assert (stored.status, stored.error, stored.finished_at) == ("running", None, None)
    assert children(db, run.key) == {"scores": 0, "timings": 0, "layer_masks": 0}

    with db.session() as session:  # and a new result lands cleanly (no unique-constraint clash)
        store.record(session, run, completed(run, ppl=20.0), OWNER)
    assert children(db, run.key) == {"scores": 2, "timings": 2, "layer_masks": 2}
    with db.session() as session:
        values = session.scalars(select(Score.value).join(Run).where(Run.key == run.key)).all()
    assert sorted(values) == [20.0, 21.0]


def test_claiming_a_failed_run_clears_its_error(db: Database, spec, runs: list[RunSpec]) -> None:
    run = runs[0]
    claim_all(db, spec, [run])
    with db.session() as session:
        store.record(session, run, failed(run), OWNER)
    claim_all(db, spec, [run])
    stored = row(db, run.key)
    assert (stored.status, stored.error) == ("running", None)


def test_release_returns_running_rows_to_pending(db: Database, spec, runs: list[RunSpec]) -> None:
    claim_all(db, spec, runs)
    dense, s25, s50 = runs
    with db.session() as session:
        store.record(session, dense, completed(dense), OWNER)
    with db.session() as session:
        store.record(session, s25, failed(s25), OWNER)
    with db.session() as session:
        store.release(session, OWNER, [r.key for r in runs])  # only running rows are touched
    assert [row(db, r.key).status for r in runs] == ["completed", "failed", "pending"]
    assert children(db, dense.key)["scores"] == 2


def test_run_statuses(db: Database, spec, runs: list[RunSpec]) -> None:
    with db.session() as session:
        assert store.run_statuses(session, [r.key for r in runs]) == {}
        assert store.run_statuses(session, []) == {}
    claim_all(db, spec, runs[:2])
    with db.session() as session:
        store.record(session, runs[0], completed(runs[0]), OWNER)
    with db.session() as session:
        statuses = store.run_statuses(session, [r.key for r in runs] + ["unknown-key"])
    assert statuses == {runs[0].key: "completed", runs[1].key: "running"}


def test_run_statuses_of_many_keys(db: Database, spec, runs: list[RunSpec]) -> None:
    """Keys are looked up in chunks (bound-parameter limits); a long list still finds every row."""
    claim_all(db, spec, runs)
    keys = [f"missing{i:09d}" for i in range(1200)]
    keys[700:700] = [r.key for r in runs]
    with db.session() as session:
        assert store.run_statuses(session, keys) == {r.key: "running" for r in runs}


def test_a_failed_write_rolls_back_and_leaves_the_run_running(db: Database, spec, runs: list[RunSpec]) -> None:
    claim_all(db, spec, runs)
    run = runs[1]
    result = completed(run)
    result.scores.append(("eval.txt", "perplexity", 99.0))  # violates unique (run_id, dataset, metric)
    with pytest.raises(IntegrityError):
        with db.session() as session:
            store.record(session, run, result, OWNER)
    stored = row(db, run.key)
    assert (stored.status, stored.finished_at, stored.achieved_sparsity, stored.details) == (
        "running", None, None, None)
    assert children(db, run.key) == {"scores": 0, "timings": 0, "layer_masks": 0}
    # the run can still be recorded properly afterwards
    with db.session() as session:
        store.record(session, run, completed(run), OWNER)
    assert row(db, run.key).status == "completed"


def test_leaderboard_cells_aggregate_seeds_in_the_database(db: Database, spec, runs: list[RunSpec]) -> None:
    import statistics

    seeds = plan_sweep(spec.model_copy(update={"seeds": [0, 1, 2]}))
    dense, *pruned = seeds
    at_25 = [r for r in pruned if r.sparsity == 0.25]
    claim_all(db, spec, seeds)
    values = {run.key: 10.0 + 1.7 * i for i, run in enumerate(seeds)}
    for run in seeds:
        result = completed(run, ppl=values[run.key]) if run is not at_25[-1] else failed(run)
        with db.session() as session:
            store.record(session, run, result, OWNER)
    with db.session() as session:
        cells = {(c.method, c.target_sparsity): c for c in store.leaderboard_cells(session, None, "perplexity")}
        assert set(cells) == {("dense", 0.0), ("2ssp", 0.25), ("2ssp", 0.5)}
        cell = cells[("2ssp", 0.25)]
        assert cell.runs == 2 and cell.achieved_sparsity == pytest.approx(0.25)  # the failed seed is left out
        mean, sd, n = cell.scores["eval.txt"]
        expected = [values[r.key] for r in at_25[:2]]
        assert n == 2 and mean == pytest.approx(statistics.mean(expected))
        assert sd == pytest.approx(statistics.stdev(expected))
        assert cells[("dense", 0.0)].scores["other.txt"] == (pytest.approx(values[dense.key] + 1), None, 1)
        assert cell.evaluation_key == dense.evaluation_key == at_25[0].evaluation_key  # evaluated alike
        assert {c.method: c.scores for c in store.leaderboard_cells(session, "store-test", "accuracy")}["2ssp"] == {}
        assert store.leaderboard_cells(session, "another-sweep", "perplexity") == []


# --------------------------------------------------------------------------- claims between drivers

def claim_one(db: Database, spec, run: RunSpec, owner: str, *, rerun_failed: bool = False,
              stale_before: datetime = T0) -> bool:
    with db.session() as session:
        sweep = store.upsert_sweep(session, spec, None)
        return store.claim(session, sweep.id, run, owner, rerun_failed=rerun_failed, stale_before=stale_before)


def test_a_run_held_by_a_live_driver_is_not_claimed_again(db: Database, spec, runs: list[RunSpec]) -> None:
    run = runs[1]
    assert claim_one(db, spec, run, "a")
    assert not claim_one(db, spec, run, "b")  # a's heartbeat is fresh (newer than T0)
    assert (row(db, run.key).owner, row(db, run.key).attempts) == ("a", 1)
    with db.session() as session:
        assert store.record(session, run, completed(run), "b") is None  # b does not hold it: nothing written
    assert row(db, run.key).status == "running" and children(db, run.key)["scores"] == 0


def test_a_stale_running_run_is_taken_over_and_counts_an_attempt(db: Database, spec, runs: list[RunSpec]) -> None:
    run = runs[1]
    assert claim_one(db, spec, run, "dead")
    later = datetime.now(timezone.utc) + timedelta(seconds=1)  # every heartbeat is older than this
    assert claim_one(db, spec, run, "alive", stale_before=later)
    stored = row(db, run.key)
    assert (stored.owner, stored.attempts, stored.status) == ("alive", 2, "running")
    with db.session() as session:
        assert store.record(session, run, completed(run), "dead") is None  # the dead driver's late result
        assert store.record(session, run, completed(run), "alive") is not None
    assert row(db, run.key).status == "completed"
    assert not claim_one(db, spec, run, "third", rerun_failed=True, stale_before=later)  # completed: never


def test_failed_runs_are_claimed_only_when_asked(db: Database, spec, runs: list[RunSpec]) -> None:
    run = runs[0]
    assert claim_one(db, spec, run, "a")
    with db.session() as session:
        store.record(session, run, failed(run), "a")
    assert not claim_one(db, spec, run, "b")
    assert claim_one(db, spec, run, "b", rerun_failed=True)
    assert (row(db, run.key).attempts, row(db, run.key).error) == (2, None)


def test_heartbeat_refreshes_own_runs_and_reports_cancellation(db: Database, spec, runs: list[RunSpec]) -> None:
    for run, owner in zip(runs, ("a", "a", "b")):
        assert claim_one(db, spec, run, owner)
    with db.session() as session:
        session.execute(Run.__table__.update().values(heartbeat_at=T0))
        sweep_id = session.scalar(select(Sweep.id))
    with db.session() as session:
        assert store.heartbeat(session, "a", sweep_id) is False
    beats = {r.key: as_utc(row(db, r.key).heartbeat_at) for r in runs}
    assert beats[runs[0].key] > T0 and beats[runs[1].key] > T0 and beats[runs[2].key] == T0
    with db.session() as session:
        assert store.request_cancel(session, "store-test") == 3
        assert store.request_cancel(session, "no-such-sweep") is None
    with db.session() as session:
        assert store.heartbeat(session, "a", sweep_id) is True
    with db.session() as session:
        store.upsert_sweep(session, spec, None)  # running the sweep again clears the request
    with db.session() as session:
        assert store.heartbeat(session, "a", sweep_id) is False


def test_concurrent_claims_never_give_a_run_twice(db_url: str, spec) -> None:
    """Four drivers race for the same 25 runs, each in its own thread and connection."""
    import threading

    many = plan_sweep(spec.model_copy(update={"seeds": list(range(12))}))
    assert len(many) == 25
    databases = [Database(db_url) for _ in range(4)]
    won: dict[str, list[str]] = {}
    start = threading.Barrier(4)

    def driver(i: int) -> None:
        start.wait()
        won[f"d{i}"] = [r.key for r in many if claim_one(databases[i], spec, r, f"d{i}")]

    threads = [threading.Thread(target=driver, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for database in databases:
        database.close()
    claimed = [key for keys in won.values() for key in keys]
    assert sorted(claimed) == sorted(r.key for r in many)  # every run exactly once
    with Database(db_url) as check, check.session() as session:
        owners = dict(session.execute(select(Run.key, Run.owner)).tuples().all())
        assert all(session.scalars(select(Run.attempts)).all()) and set(session.scalars(select(Run.attempts))) == {1}
    assert all(owners[key] == d for d, keys in won.items() for key in keys)
