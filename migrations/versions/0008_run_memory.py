"""peak memory per phase and device, and where a run's blocks lived

Revision ID: 0008
Revises: 0007
Create Date: 2027-01-05 10:00:00

``run_memory``: what a run measured of its memory, one row per (phase, device, metric): the CUDA
allocator's peak per GPU (``peak_cuda_allocated_bytes``), the process's peak resident set on the
CPU (``peak_rss_bytes``, or ``peak_rss_lifetime_bytes`` where the peak could not be reset), and the
plan's estimate of the whole run's peak per device (phase ``plan``, ``estimate_bytes``). The rows go
with their run (``ON DELETE CASCADE``). ``runs.placement``: where the run's blocks lived (``single``,
``split 4x cuda``, ``stream from disk``); NULL for runs stored before. The downgrade drops both.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0008'
down_revision: Union[str, Sequence[str], None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('run_memory',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('phase', sa.String(length=100), nullable=False),
    sa.Column('device', sa.String(length=50), nullable=False),
    sa.Column('metric', sa.String(length=50), nullable=False),
    sa.Column('bytes', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_run_memory_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_run_memory')),
    sa.UniqueConstraint('run_id', 'phase', 'device', 'metric', name=op.f('uq_run_memory_run_id'))
    )
    with op.batch_alter_table('run_memory', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_run_memory_run_id'), ['run_id'], unique=False)
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('placement', sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_column('placement')
    with op.batch_alter_table('run_memory', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_run_memory_run_id'))
    op.drop_table('run_memory')
