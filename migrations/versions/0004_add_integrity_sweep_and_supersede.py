"""Add the integrity sweep's last check and the superseded mark to executions.

dag_executions.verified_at records when the integrity sweep last verified an
execution's chain again. superseded_by, superseded_at and superseded_reason
mark an execution that an operator regenerated: the sweep and the chain
validity gauge skip it, and its records stay unchanged as evidence.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05

Downgrade risk: downgrading drops the superseded marks, so executions that
were regenerated after a broken chain count as broken again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('dag_executions') as batch:
        batch.add_column(sa.Column('verified_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('superseded_by', sa.String(length=36), nullable=True))
        batch.add_column(sa.Column('superseded_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('superseded_reason', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('dag_executions') as batch:
        batch.drop_column('superseded_reason')
        batch.drop_column('superseded_at')
        batch.drop_column('superseded_by')
        batch.drop_column('verified_at')
