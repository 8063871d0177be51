"""the run keys each sweep plans

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-15 10:00:00

``sweeps.planned_keys``: the keys of the runs the sweep's plan expanded to, written by every
``sweep run``. A run belongs to one sweep row (``runs.sweep_id``, the sweep that last claimed it), but
sweeps share cells: the status of a sweep counts and lists its planned runs wherever they were
computed. NULL for sweeps stored before it (their status falls back to ``runs.sweep_id``). The
downgrade drops the column.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('sweeps', schema=None) as batch_op:
        batch_op.add_column(sa.Column('planned_keys', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('sweeps', schema=None) as batch_op:
        batch_op.drop_column('planned_keys')
