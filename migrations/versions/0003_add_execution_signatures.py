"""Add the signed chain head to executions.

Without a signature, anyone with write access to the database can change an
output and recompute every hash after it unnoticed. The finalizer now signs
the chain head with the Ed25519 key of GL_ORCHESTRATOR_SIGNING_KEY_FILE and
stores when it finalized (dag_executions.finalized_at), the signature
(signature, base64) and the signing key's id (signing_key_id). All three are
nullable: executions finalized before this revision, or without a key, stay
unsigned.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05

Downgrade risk: downgrading drops every stored signature, and the executions
then verify as unsigned; take a backup first if the signatures are evidence.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('dag_executions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('finalized_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('signature', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('signing_key_id', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('dag_executions', schema=None) as batch_op:
        batch_op.drop_column('signing_key_id')
        batch_op.drop_column('signature')
        batch_op.drop_column('finalized_at')
