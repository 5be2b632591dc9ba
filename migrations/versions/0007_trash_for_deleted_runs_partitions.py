"""a trash for deleted runs' partitions

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 21:00:00

``graygate runs delete`` (and ``prune``, and the admin API's DELETE) removes a run in one
short transaction: its partitions of exchanges and differences are detached and moved to
the schema ``graygate_trash``, each recorded in the table ``trash``; the reaper
(``store.trash``) drops them afterwards, off the caller's path. The downgrade drops
whatever is still in the trash (those runs are already deleted).
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

revision: str = '0007'
down_revision: Union[str, Sequence[str], None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

TRASH_SCHEMA = 'graygate_trash'


def upgrade() -> None:
    """Upgrade schema."""
    op.execute(f'CREATE SCHEMA IF NOT EXISTS {TRASH_SCHEMA}')
    op.create_table('trash',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('relname', sa.Text(), nullable=False),
    sa.Column('run_id', sa.BigInteger(), nullable=False),
    sa.Column('run_name', sa.Text(), nullable=False),
    sa.Column('bytes', sa.BigInteger(), nullable=False),
    sa.Column('trashed_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trash')),
    sa.UniqueConstraint('relname', name=op.f('uq_trash_relname'))
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('trash')
    op.execute(f'DROP SCHEMA IF EXISTS {TRASH_SCHEMA} CASCADE')
