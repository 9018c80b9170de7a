"""Add checkpoint archives, retention marks, deadlines and worker heartbeats.

checkpoint_archive and provenance_archive keep records that a resume moves
aside (corrupted evidence or superseded attempts) with when and why.
dag_checkpoints.payload_removed_at marks outputs removed by retention while
the hashes stay. dag_executions.deadline_at holds the execution timeout, and
worker_heartbeats the last sign of life of each worker.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04

Downgrade risk: downgrading drops the archives, and with them the evidence of
corrupted checkpoints; take a backup first.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy import Text
from sqlalchemy.dialects import postgresql

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('worker_heartbeats',
    sa.Column('worker', sa.String(length=255), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('worker')
    )
    op.create_table('checkpoint_archive',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('execution_id', sa.String(length=36), nullable=False),
    sa.Column('node_id', sa.String(length=63), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('outputs', sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), 'postgresql'), nullable=True),
    sa.Column('output_hash', sa.String(length=64), nullable=True),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.Column('attempt_count', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('archived_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['execution_id'], ['dag_executions.execution_id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('checkpoint_archive', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_checkpoint_archive_execution_id'), ['execution_id'], unique=False)

    op.create_table('provenance_archive',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('execution_id', sa.String(length=36), nullable=False),
    sa.Column('node_id', sa.String(length=63), nullable=False),
    sa.Column('ordinal', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('agent_id', sa.String(length=63), nullable=True),
    sa.Column('agent_version', sa.String(length=63), nullable=True),
    sa.Column('input_document', sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), 'postgresql'), nullable=True),
    sa.Column('input_hash', sa.String(length=64), nullable=False),
    sa.Column('output_hash', sa.String(length=64), nullable=False),
    sa.Column('parent_hashes', sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), 'postgresql'), nullable=False),
    sa.Column('chain_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('archived_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['execution_id'], ['dag_executions.execution_id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('provenance_archive', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_provenance_archive_execution_id'), ['execution_id'], unique=False)

    with op.batch_alter_table('dag_checkpoints', schema=None) as batch_op:
        batch_op.add_column(sa.Column('payload_removed_at', sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table('dag_executions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('deadline_at', sa.DateTime(timezone=True), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('dag_executions', schema=None) as batch_op:
        batch_op.drop_column('deadline_at')

    with op.batch_alter_table('dag_checkpoints', schema=None) as batch_op:
        batch_op.drop_column('payload_removed_at')

    with op.batch_alter_table('provenance_archive', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_provenance_archive_execution_id'))

    op.drop_table('provenance_archive')
    with op.batch_alter_table('checkpoint_archive', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_checkpoint_archive_execution_id'))

    op.drop_table('checkpoint_archive')
    op.drop_table('worker_heartbeats')
