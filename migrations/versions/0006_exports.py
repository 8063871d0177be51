"""exported model files and what the serving engine measured on them

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-22 10:00:00

Every file ``twossp export`` writes from a completed run is an ``exports`` row: the format (a
Hugging Face checkpoint or a GGUF file), the GGUF tensor type and llama.cpp architecture, the path,
the size and the file's SHA-256. ``twossp export --format gguf --evaluate`` adds what llama.cpp
measured on the file in ``export_scores`` (perplexity on the run's own evaluation windows, prompt
and generation tokens per second), beside the run's own ``scores``. Both go with their run (``ON
DELETE CASCADE``). The downgrade drops the two tables.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0006'
down_revision: Union[str, Sequence[str], None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('exports',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('format', sa.String(length=20), nullable=False),
    sa.Column('tensor_type', sa.String(length=20), nullable=True),
    sa.Column('architecture', sa.String(length=50), nullable=True),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('engine', sa.String(length=100), nullable=True),
    sa.Column('details', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_exports_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_exports'))
    )
    with op.batch_alter_table('exports', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_exports_run_id'), ['run_id'], unique=False)
    op.create_table('export_scores',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('export_id', sa.Integer(), nullable=False),
    sa.Column('dataset', sa.String(length=200), nullable=False),
    sa.Column('metric', sa.String(length=100), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['export_id'], ['exports.id'], name=op.f('fk_export_scores_export_id_exports'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_export_scores')),
    sa.UniqueConstraint('export_id', 'dataset', 'metric', name=op.f('uq_export_scores_export_id'))
    )
    with op.batch_alter_table('export_scores', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_export_scores_export_id'), ['export_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('export_scores', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_export_scores_export_id'))
    op.drop_table('export_scores')
    with op.batch_alter_table('exports', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_exports_run_id'))
    op.drop_table('exports')
