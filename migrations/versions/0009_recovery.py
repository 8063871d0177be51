"""recovery after pruning: a recovered run's loss curve, and its recovery label

Revision ID: 0009
Revises: 0008
Create Date: 2027-01-12 10:00:00

``recovery_steps``: the loss curve of a recovered run (``twossp.recover``), one row per optimiser
step: the loss it minimised and its KD and CE parts, the learning rate, the gradient norm before
clipping, the training tokens and seconds so far, and at the evaluation steps the held-out
perplexity. A loss that was not finite (a training that diverged) is NULL. Unique per (run, step);
the rows go with their run (``ON DELETE CASCADE``); a failed recovery keeps the steps it took.
``runs.recovery``: the recovery's label (``kd-full``, ``ce-lora-r8``, or the sweep's ``name:``),
NULL for a run that was not recovered, so views keep recovered and unrecovered runs apart with a
plain column. The downgrade drops both.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0009'
down_revision: Union[str, Sequence[str], None] = '0008'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('recovery_steps',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('loss', sa.Float(), nullable=True),
    sa.Column('kd_loss', sa.Float(), nullable=True),
    sa.Column('ce_loss', sa.Float(), nullable=True),
    sa.Column('lr', sa.Float(), nullable=False),
    sa.Column('grad_norm', sa.Float(), nullable=True),
    sa.Column('tokens', sa.BigInteger(), nullable=False),
    sa.Column('seconds', sa.Float(), nullable=False),
    sa.Column('heldout_perplexity', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_recovery_steps_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_recovery_steps')),
    sa.UniqueConstraint('run_id', 'step', name=op.f('uq_recovery_steps_run_id'))
    )
    with op.batch_alter_table('recovery_steps', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_recovery_steps_run_id'), ['run_id'], unique=False)
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('recovery', sa.String(length=200), nullable=True))
        batch_op.create_index(batch_op.f('ix_runs_recovery'), ['recovery'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_runs_recovery'))
        batch_op.drop_column('recovery')
    with op.batch_alter_table('recovery_steps', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_recovery_steps_run_id'))
    op.drop_table('recovery_steps')
