"""Record which checkpoint strategy kept each checkpoint's outputs.

dag_checkpoints.payload_store names the strategy (database, file or memory)
that wrote the row's outputs, so a process configured with another strategy
reports them as unreadable instead of taking the empty column for altered
outputs. NULL, on rows written before this revision, means database.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05

Downgrade risk: downgrading drops the column; rows written by the file or
memory strategy then look like database rows with no outputs.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('dag_checkpoints') as batch:
        batch.add_column(sa.Column('payload_store', sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('dag_checkpoints') as batch:
        batch.drop_column('payload_store')
