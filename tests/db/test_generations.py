"""Qualitative generations in the result database: ``store.record`` writes a completed run's
generations in prompt order, ``store.claim`` clears what an earlier attempt left, and plain SQL reads
them back (the ``generations`` table is part of the public schema)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from tests.support.stored_runs import T0, claim, record, tiny_sweep
from twossp.contracts import RunResult, RunStatus
from twossp.db.database import Database
from twossp.plan import RunSpec, plan_sweep
from twossp.spec import SweepSpec

GENERATIONS = [
    ("The old teacher", " opened the window slowly.", 7),
    ("Zürich —\nline two", "", 1),             # ended by EOS at once: nothing shown, one token counted
    ("A green river", " crossed the bridge", 16),
]
BY_SQL = text("SELECT g.position, g.prompt, g.output, g.new_tokens FROM generations g "
              "JOIN runs r ON r.id = g.run_id WHERE r.key = :key ORDER BY g.position")


@pytest.fixture
def runs() -> tuple[SweepSpec, list[RunSpec]]:
    spec = tiny_sweep("generations")
    return spec, plan_sweep(spec)


def stored(db: Database, key: str) -> list[tuple]:
    with db.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(BY_SQL, {"key": key})]


def completed(run: RunSpec, generations: list[tuple[str, str, int]]) -> RunResult:
    return RunResult(key=run.key, status=RunStatus.COMPLETED, started_at=T0, finished_at=T0, achieved_sparsity=0.5,
                     scores=[("eval.txt", "perplexity", 12.5)], generations=generations)


def test_generations_are_stored_in_prompt_order(db: Database, runs) -> None:
    spec, (dense, pruned) = runs
    assert claim(db, spec, dense, pruned)
    record(db, pruned, completed(pruned, GENERATIONS))
    record(db, dense, completed(dense, GENERATIONS[:1]))
    assert stored(db, pruned.key) == [(i, *generation) for i, generation in enumerate(GENERATIONS)]
    assert stored(db, dense.key) == [(0, *GENERATIONS[0])]


def test_a_failed_run_stores_no_generations(db: Database, runs) -> None:
    spec, (_, pruned) = runs
    assert claim(db, spec, pruned)
    failed = RunResult(key=pruned.key, status=RunStatus.FAILED, error="RuntimeError: boom", generations=GENERATIONS)
    record(db, pruned, failed)
    assert stored(db, pruned.key) == []


def test_a_new_claim_clears_the_generations_of_an_earlier_attempt(db: Database, runs) -> None:
    spec, (_, pruned) = runs
    assert claim(db, spec, pruned)
    record(db, pruned, completed(pruned, GENERATIONS))
    assert len(stored(db, pruned.key)) == 3
    with db.engine.begin() as conn:  # sent back to pending by hand, to be computed again
        conn.execute(text("UPDATE runs SET status = 'pending' WHERE key = :key"), {"key": pruned.key})
    assert claim(db, spec, pruned)
    assert stored(db, pruned.key) == []
    record(db, pruned, completed(pruned, GENERATIONS[2:]))
    assert stored(db, pruned.key) == [(0, *GENERATIONS[2])]
