"""A recovered run in the database (schema 0009): its recovery label in ``runs.recovery`` from the
claim (NULL for a run that was not recovered), its loss curve in ``recovery_steps`` with its result,
a failed run's too; cleared when the run is claimed again, deleted with the run. On SQLite and
PostgreSQL (the ``db`` fixture), through the real store."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from tests.support.stored_runs import claim, record, tiny_sweep
from twossp.contracts import RecoveryStep, RunResult, RunStatus
from twossp.db.database import Database
from twossp.db.models import RecoveryStepRow, Run
from twossp.plan import RunSpec, plan_sweep
from twossp.spec import SweepSpec

RECOVERY = ["none", {"loss": "kd", "steps": 3}, {"name": "heal", "loss": "ce", "tune": "lora", "steps": 3}]

#: a three-step curve, held-out perplexity measured at the last step, above 2**31 tokens at the end
CURVE = [RecoveryStep(step=1, loss=2.5, kd_loss=2.5, ce_loss=3.1, lr=1e-4, grad_norm=4.0, tokens=1024, seconds=1.5),
         RecoveryStep(step=2, loss=2.0, kd_loss=2.0, ce_loss=2.9, lr=5e-5, grad_norm=None, tokens=2048, seconds=3.0),
         RecoveryStep(step=3, loss=1.75, kd_loss=1.75, ce_loss=2.8, lr=0.0, grad_norm=2.0, tokens=3 * 2**31,
                      seconds=4.5, heldout_perplexity=21.5)]


def as_tuples(steps: list[RecoveryStep]) -> list[tuple]:
    return [(s.step, s.loss, s.kd_loss, s.ce_loss, s.lr, s.grad_norm, s.tokens, s.seconds, s.heldout_perplexity)
            for s in steps]


def stored(db: Database, key: str) -> tuple[str | None, list[tuple]]:
    """The run's recovery label and its loss curve as stored, in step order."""
    with db.session() as session:
        run = session.scalars(select(Run).where(Run.key == key)).one()
        return run.recovery, [(s.step, s.loss, s.kd_loss, s.ce_loss, s.lr, s.grad_norm, s.tokens, s.seconds,
                               s.heldout_perplexity) for s in run.recovery_steps]


def recovery_sweep(name: str) -> tuple[SweepSpec, dict[str | None, RunSpec]]:
    """A tiny sweep's 2SSP runs by recovery label (None: the pruning run)."""
    spec = tiny_sweep(name, recovery=RECOVERY)
    runs = {r.recovery.label if r.recovery else None: r for r in plan_sweep(spec) if r.method.name == "2ssp"}
    assert set(runs) == {None, "kd-full", "heal"}
    return spec, runs


def test_the_claim_names_each_runs_recovery(db: Database) -> None:
    spec, runs = recovery_sweep("labels")
    dense = next(r for r in plan_sweep(spec) if r.method.name == "dense")
    assert claim(db, spec, dense, *runs.values())
    assert stored(db, dense.key) == (None, [])
    assert {label: stored(db, run.key)[0] for label, run in runs.items()} == \
        {None: None, "kd-full": "kd-full", "heal": "heal"}  # a name: given is the label


def test_a_completed_recovery_stores_its_loss_curve(db: Database) -> None:
    spec, runs = recovery_sweep("curve")
    run = runs["kd-full"]
    assert claim(db, spec, run)
    shuffled = [CURVE[2], CURVE[0], CURVE[1]]  # stored and read back in step order
    record(db, run, RunResult(key=run.key, status=RunStatus.COMPLETED, recovery=shuffled,
                              details={"recovery": {"from": runs[None].key}}))
    assert stored(db, run.key) == ("kd-full", as_tuples(CURVE))


def test_a_failed_recovery_stores_how_far_it_got_and_a_loss_that_diverged_as_null(db: Database) -> None:
    """SQLite has no NaN: a diverged loss is NULL on both databases, and the result is still stored."""
    spec, runs = recovery_sweep("diverged")
    run = runs["heal"]
    assert claim(db, spec, run)
    diverged = RecoveryStep(step=2, loss=math.nan, kd_loss=None, ce_loss=math.inf, lr=1e-4, grad_norm=math.nan,
                            tokens=2048, seconds=3.0)
    record(db, run, RunResult(key=run.key, status=RunStatus.FAILED, error="FloatingPointError: loss is nan",
                              recovery=[CURVE[0], diverged]))
    assert stored(db, run.key) == ("heal", [as_tuples(CURVE)[0], (2, None, None, None, 1e-4, None, 2048, 3.0, None)])


def test_a_step_reported_twice_keeps_its_last_report(db: Database) -> None:
    spec, runs = recovery_sweep("twice")
    run = runs["kd-full"]
    assert claim(db, spec, run)
    again = RecoveryStep(step=1, loss=2.4, kd_loss=2.4, ce_loss=3.0, lr=1e-4, grad_norm=4.0, tokens=1024, seconds=1.6)
    record(db, run, RunResult(key=run.key, status=RunStatus.COMPLETED, recovery=[CURVE[0], again]))
    assert stored(db, run.key)[1] == as_tuples([again])


def test_claiming_again_clears_the_curve_and_deleting_the_run_deletes_it(db: Database) -> None:
    spec, runs = recovery_sweep("again")
    run = runs["kd-full"]
    assert claim(db, spec, run)
    record(db, run, RunResult(key=run.key, status=RunStatus.FAILED, error="interrupted", recovery=CURVE[:2]))
    assert claim(db, spec, run)  # rerun: nothing of the failed attempt is left, the label stays
    assert stored(db, run.key) == ("kd-full", [])
    record(db, run, RunResult(key=run.key, status=RunStatus.COMPLETED, recovery=CURVE))
    assert stored(db, run.key) == ("kd-full", as_tuples(CURVE))
    with db.session() as session:  # plain SQL delete: the database cascades, not the ORM
        session.execute(delete(Run).where(Run.key == run.key))
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(RecoveryStepRow)) == 0


def test_a_step_is_unique_per_run(db: Database) -> None:
    spec, runs = recovery_sweep("unique")
    run = runs["kd-full"]
    assert claim(db, spec, run)
    record(db, run, RunResult(key=run.key, status=RunStatus.COMPLETED, recovery=CURVE[:1]))
    with pytest.raises(IntegrityError):
        with db.session() as session:
            run_id = session.scalar(select(Run.id).where(Run.key == run.key))
            session.add(RecoveryStepRow(run_id=run_id, step=1, loss=1.0, lr=0.0, tokens=1, seconds=1.0))
