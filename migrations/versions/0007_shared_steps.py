"""shared steps: work several runs share, computed once and kept

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-29 10:00:00

``shared_steps``: the result of each shared step a sweep computed (2SSP's stage-1 neuron scores,
the block states ShortGPT and the window method rank, BlockPruner's greedy path), keyed by what
determines it (the model's weights, the dtype, the calibration windows, the parameters that matter),
with the SHA-256 of the calibration windows it read, its timings and where it ran; ``payload`` is the
result as ``torch.save`` writes it. ``runs.shared_step``: the key of the step whose result a run took
instead of computing it (NULL: it computed everything itself). The downgrade drops both.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0007'
down_revision: Union[str, Sequence[str], None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('shared_steps',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=50), nullable=False),
    sa.Column('label', sa.Text(), nullable=False),
    sa.Column('identity', sa.JSON(), nullable=False),
    sa.Column('calibration_sha256', sa.String(length=64), nullable=True),
    sa.Column('payload', sa.LargeBinary(), nullable=False),
    sa.Column('seconds', sa.Float(), nullable=False),
    sa.Column('timings', sa.JSON(), nullable=True),
    sa.Column('host', sa.String(length=200), nullable=True),
    sa.Column('device', sa.String(length=200), nullable=True),
    sa.Column('versions', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_shared_steps')),
    sa.UniqueConstraint('key', name=op.f('uq_shared_steps_key'))
    )
    with op.batch_alter_table('shared_steps', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_shared_steps_kind'), ['kind'], unique=False)
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('shared_step', sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f('ix_runs_shared_step'), ['shared_step'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_runs_shared_step'))
        batch_op.drop_column('shared_step')
    with op.batch_alter_table('shared_steps', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_shared_steps_kind'))
    op.drop_table('shared_steps')
