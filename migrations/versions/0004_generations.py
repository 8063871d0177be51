"""qualitative generations per run

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08 10:00:00

A completed run may store what the pruned model writes after a few fixed prompts: one
``generations`` row per prompt (``position`` is the prompt's place in the run's list), the greedy
output (new tokens only) and how many tokens were generated. The rows go with their run
(``ON DELETE CASCADE``) like scores, timings and masks. The downgrade drops the table.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0004'
down_revision: Union[str, Sequence[str], None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('generations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('prompt', sa.Text(), nullable=False),
    sa.Column('output', sa.Text(), nullable=False),
    sa.Column('new_tokens', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_generations_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_generations')),
    sa.UniqueConstraint('run_id', 'position', name=op.f('uq_generations_run_id'))
    )
    with op.batch_alter_table('generations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_generations_run_id'), ['run_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('generations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_generations_run_id'))

    op.drop_table('generations')
