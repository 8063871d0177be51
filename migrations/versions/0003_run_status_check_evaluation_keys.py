"""run status CHECK constraint; evaluation keys from the plan

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 10:00:00

``runs.status`` is held to the four run states (``twossp.contracts.RunStatus``) by the CHECK
constraint ``ck_runs_status``, on SQLite (the table is rebuilt in batch mode) and PostgreSQL alike.
A row holding anything else (only ever written by hand: twossp never wrote other values) becomes
``failed``, the old value kept in its ``error``, so that the constraint can be added and the run is
rerun by ``--rerun-failed``.

``runs.evaluation_key`` is recomputed from each row's ``spec`` with the plan's own rule
(``RunSpec.evaluation_key``: the evaluation identity the run key also hashes, datasets sorted).
Migration 0002 hashed the ``evaluation`` JSON as listed, so two runs evaluated on the same datasets
listed in another order had different keys, and the leaderboard did not compare them. A row whose
spec no longer validates keeps its key. The downgrade drops the constraint and keeps the keys.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0003'
down_revision: Union[str, Sequence[str], None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

STATUSES = ('pending', 'running', 'completed', 'failed')  # frozen here: the migration must not follow later code
BATCH = 500

runs = sa.table('runs', sa.column('id', sa.Integer), sa.column('status', sa.String),
                sa.column('error', sa.Text), sa.column('spec', sa.JSON), sa.column('evaluation_key', sa.String))


def _fail_unknown_statuses(conn) -> None:  # noqa: ANN001
    for run_id, status, error in conn.execute(
            sa.select(runs.c.id, runs.c.status, runs.c.error).where(
                sa.or_(runs.c.status.is_(None), runs.c.status.not_in(STATUSES)))).all():
        note = f"status {status!r} is not a run state (set to failed by migration 0003)"
        conn.execute(runs.update().where(runs.c.id == run_id)
                     .values(status='failed', error=f"{note}; {error}" if error else note))


def _recompute_evaluation_keys(conn) -> None:  # noqa: ANN001
    from pydantic import ValidationError

    from twossp.plan import RunSpec

    last = 0
    while True:
        chunk = conn.execute(sa.select(runs.c.id, runs.c.spec, runs.c.evaluation_key)
                             .where(runs.c.id > last).order_by(runs.c.id).limit(BATCH)).all()
        if not chunk:
            return
        last = chunk[-1][0]
        changed = []
        for run_id, spec, old in chunk:
            try:
                key = RunSpec.model_validate(spec).evaluation_key
            except (ValidationError, ValueError, TypeError, LookupError):
                continue  # a spec this version cannot read: its key stays as it was
            if key != old:
                changed.append({'row_id': run_id, 'key': key})
        if changed:
            conn.execute(runs.update().where(runs.c.id == sa.bindparam('row_id'))
                         .values(evaluation_key=sa.bindparam('key')), changed)


def upgrade() -> None:
    conn = op.get_bind()
    _fail_unknown_statuses(conn)
    _recompute_evaluation_keys(conn)
    with op.batch_alter_table('runs') as batch:
        batch.create_check_constraint(op.f('ck_runs_status'),
                                      sa.text("status IN ('pending', 'running', 'completed', 'failed')"))


def downgrade() -> None:
    with op.batch_alter_table('runs') as batch:
        batch.drop_constraint(op.f('ck_runs_status'), type_='check')
