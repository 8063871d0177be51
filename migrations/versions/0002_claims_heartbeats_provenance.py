"""claims, heartbeats, attempts, cancellation and token-stream provenance

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 15:00:00

Runs get the driver that holds them (``owner``), its last sign of life (``heartbeat_at``) and how
many times they were started (``attempts``); a ``running`` row whose heartbeat is stale belongs to
a dead driver and is run again. Sweeps get ``cancel_requested_at`` (``twossp sweep cancel``). The
sha256 of the calibration token stream (runs) and of each evaluation token stream (scores) record
exactly which tokens produced a number. ``evaluation_key`` (a hash of the run's evaluation settings,
backfilled from its spec) lets the leaderboard compare runs evaluated alike without parsing JSON.
"""
import hashlib
import json
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0002'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('runs') as batch:
        batch.add_column(sa.Column('owner', sa.String(length=200), nullable=True))
        batch.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('attempts', sa.Integer(), server_default='0', nullable=False))
        batch.add_column(sa.Column('calibration_sha256', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('evaluation_key', sa.String(length=64), nullable=True))
    runs = sa.table('runs', sa.column('id', sa.Integer), sa.column('spec', sa.JSON),
                    sa.column('evaluation_key', sa.String))
    conn = op.get_bind()
    for run_id, spec in conn.execute(sa.select(runs.c.id, runs.c.spec)).all():
        evaluation = json.dumps((spec or {}).get('evaluation'), sort_keys=True, separators=(',', ':'))
        conn.execute(runs.update().where(runs.c.id == run_id)
                     .values(evaluation_key=hashlib.sha256(evaluation.encode()).hexdigest()[:16]))
    with op.batch_alter_table('scores') as batch:
        batch.add_column(sa.Column('tokens_sha256', sa.String(length=64), nullable=True))
    with op.batch_alter_table('sweeps') as batch:
        batch.add_column(sa.Column('cancel_requested_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('sweeps') as batch:
        batch.drop_column('cancel_requested_at')
    with op.batch_alter_table('scores') as batch:
        batch.drop_column('tokens_sha256')
    with op.batch_alter_table('runs') as batch:
        batch.drop_column('evaluation_key')
        batch.drop_column('calibration_sha256')
        batch.drop_column('attempts')
        batch.drop_column('heartbeat_at')
        batch.drop_column('owner')
