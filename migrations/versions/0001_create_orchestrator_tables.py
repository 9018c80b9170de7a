"""Create the orchestrator tables.

The first schema: registered DAGs (dag_workflows), executions
(dag_executions), per-node scheduling state (execution_nodes), checkpoints
(dag_checkpoints), provenance records (execution_provenance) and per-attempt
traces (node_traces). JSON columns are JSONB on PostgreSQL.

Revision ID: 0001
Revises:
Create Date: 2026-12-04

Downgrade risk: downgrading drops every table and with it all audit history;
take a backup first.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy import Text
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('dag_workflows',
    sa.Column('dag_id', sa.String(length=63), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('version', sa.String(length=63), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('definition', sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), 'postgresql'), nullable=False),
    sa.Column('dag_hash', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('dag_id')
    )
    op.create_table('dag_executions',
    sa.Column('execution_id', sa.String(length=36), nullable=False),
    sa.Column('dag_id', sa.String(length=63), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('dag_hash', sa.String(length=64), nullable=False),
    sa.Column('dag_document', sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), 'postgresql'), nullable=False),
    sa.Column('input_data', sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), 'postgresql'), nullable=False),
    sa.Column('input_hash', sa.String(length=64), nullable=False),
    sa.Column('execution_options', sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), 'postgresql'), nullable=False),
    sa.Column('provenance_chain_hash', sa.String(length=64), nullable=True),
    sa.Column('chain_valid', sa.Boolean(), nullable=True),
    sa.Column('nodes_total', sa.Integer(), nullable=False),
    sa.Column('nodes_remaining', sa.Integer(), nullable=False),
    sa.Column('stop_reason', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finalizer_dispatched', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['dag_id'], ['dag_workflows.dag_id'], ),
    sa.PrimaryKeyConstraint('execution_id')
    )
    with op.batch_alter_table('dag_executions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dag_executions_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_dag_executions_dag_id'), ['dag_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_dag_executions_status'), ['status'], unique=False)

    op.create_table('dag_checkpoints',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('execution_id', sa.String(length=36), nullable=False),
    sa.Column('node_id', sa.String(length=63), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('outputs', sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), 'postgresql'), nullable=True),
    sa.Column('output_hash', sa.String(length=64), nullable=True),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.Column('attempt_count', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['execution_id'], ['dag_executions.execution_id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('execution_id', 'node_id', name='uq_dag_checkpoints_execution_node')
    )
    with op.batch_alter_table('dag_checkpoints', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dag_checkpoints_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_dag_checkpoints_execution_id'), ['execution_id'], unique=False)

    op.create_table('execution_nodes',
    sa.Column('execution_id', sa.String(length=36), nullable=False),
    sa.Column('node_id', sa.String(length=63), nullable=False),
    sa.Column('ordinal', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('pending_parents', sa.Integer(), nullable=False),
    sa.Column('attempt_count', sa.Integer(), nullable=False),
    sa.Column('task_id', sa.String(length=64), nullable=True),
    sa.Column('queued_by_task', sa.String(length=64), nullable=True),
    sa.Column('worker', sa.String(length=255), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('queued_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['execution_id'], ['dag_executions.execution_id'], ),
    sa.PrimaryKeyConstraint('execution_id', 'node_id')
    )
    with op.batch_alter_table('execution_nodes', schema=None) as batch_op:
        batch_op.create_index('ix_execution_nodes_execution_status', ['execution_id', 'status'], unique=False)

    op.create_table('execution_provenance',
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
    sa.ForeignKeyConstraint(['execution_id'], ['dag_executions.execution_id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('execution_id', 'node_id', name='uq_execution_provenance_execution_node')
    )
    with op.batch_alter_table('execution_provenance', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_execution_provenance_execution_id'), ['execution_id'], unique=False)

    op.create_table('node_traces',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('execution_id', sa.String(length=36), nullable=False),
    sa.Column('node_id', sa.String(length=63), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('task_id', sa.String(length=64), nullable=True),
    sa.Column('worker', sa.String(length=255), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('duration_seconds', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['execution_id'], ['dag_executions.execution_id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('node_traces', schema=None) as batch_op:
        batch_op.create_index('ix_node_traces_execution_node', ['execution_id', 'node_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_node_traces_started_at'), ['started_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('node_traces', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_node_traces_started_at'))
        batch_op.drop_index('ix_node_traces_execution_node')

    op.drop_table('node_traces')
    with op.batch_alter_table('execution_provenance', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_execution_provenance_execution_id'))

    op.drop_table('execution_provenance')
    with op.batch_alter_table('execution_nodes', schema=None) as batch_op:
        batch_op.drop_index('ix_execution_nodes_execution_status')

    op.drop_table('execution_nodes')
    with op.batch_alter_table('dag_checkpoints', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dag_checkpoints_execution_id'))
        batch_op.drop_index(batch_op.f('ix_dag_checkpoints_created_at'))

    op.drop_table('dag_checkpoints')
    with op.batch_alter_table('dag_executions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dag_executions_status'))
        batch_op.drop_index(batch_op.f('ix_dag_executions_dag_id'))
        batch_op.drop_index(batch_op.f('ix_dag_executions_created_at'))

    op.drop_table('dag_executions')
    op.drop_table('dag_workflows')
