"""exchanges and differences partitioned by run; body digests; run versions

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08 10:00:00

exchanges and differences become ``PARTITION BY LIST (run_id)`` tables with one partition
per run (``<table>_r<run id>``, as ``store.partitions`` names them); their primary keys
become ``(run_id, id)`` and differences loses its foreign key to exchanges (a run's
partitions are dropped together). Existing rows are copied into the new tables, run by
run's partition, ids and identity sequences kept, in this one transaction: it rewrites the
two tables once (time and disk in proportion to their size). New columns: each answer's
``<side>_body_sha256`` and ``body_digest_only`` (``record.bodies.sample``); new table
``run_versions`` (``versions.header``); ``rejudge_outcomes`` keyed by run too.

The downgrade copies the rows back into plain tables (body digests are lost).
"""
from typing import Any, Sequence, Union

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision: str = '0006'
down_revision: Union[str, Sequence[str], None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

ROLES = ('primary', 'canary', 'secondary')
VERDICT_INCLUDE = [
    'noise_differences', 'strict_mismatches', 'tolerance_violations', 'primary_status',
    'canary_status', 'primary_error', 'canary_error',
]
TOASTED = ['request_headers', 'request_body'] + [
    f'{role}_{name}' for role in ROLES for name in ('headers', 'body')
]


def _side(role: str, digests: bool) -> list[sa.Column[Any]]:
    cols: list[sa.Column[Any]] = [
        sa.Column(f'{role}_status', sa.SmallInteger(), nullable=True),
        sa.Column(f'{role}_headers', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column(f'{role}_body', sa.LargeBinary(), nullable=True),
        sa.Column(f'{role}_body_truncated', sa.Boolean(), server_default='false', nullable=False),
    ]
    if digests:
        cols.append(sa.Column(f'{role}_body_sha256', sa.LargeBinary(), nullable=True))
    cols += [
        sa.Column(f'{role}_latency_ms', sa.Float(), nullable=True),
        sa.Column(f'{role}_error', sa.Text(), nullable=True),
    ]
    return cols


def _exchange_columns(new: bool) -> list[sa.Column[Any]]:
    cols: list[sa.Column[Any]] = [
        sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column('run_id', sa.BigInteger(), nullable=False),
        sa.Column('trace_id', sa.Text(), nullable=False),
        sa.Column('span_id', sa.Text(), nullable=False),
        sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('recorded_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.Column('endpoint', sa.Text(), nullable=False),
        sa.Column('method', sa.Text(), nullable=False),
        sa.Column('path', sa.Text(), nullable=False),
        sa.Column('query', sa.Text(), server_default='', nullable=False),
        sa.Column('request_headers', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column('request_body', sa.LargeBinary(), nullable=True),
        sa.Column('request_body_truncated', sa.Boolean(), server_default='false', nullable=False),
        sa.Column('gray_label', sa.Text(), nullable=True),
        sa.Column('served_by', sa.Text(), nullable=False),
        sa.Column('mirror_skipped', sa.Text(), nullable=True),
        *(c for role in ROLES for c in _side(role, new)),
        sa.Column('judged_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('outcome', sa.Text(), nullable=True),
        sa.Column('strict_mismatches', sa.Integer(), nullable=True),
        sa.Column('tolerance_violations', sa.Integer(), nullable=True),
        sa.Column('noise_differences', sa.Integer(), nullable=True),
    ]
    if new:
        cols.append(sa.Column('body_digest_only', sa.Boolean(), server_default='false', nullable=False))
    return cols


def _difference_columns() -> list[sa.Column[Any]]:
    cols: list[sa.Column[Any]] = [
        sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column('exchange_id', sa.BigInteger(), nullable=False),
        sa.Column('run_id', sa.BigInteger(), nullable=False),
        sa.Column('endpoint', sa.Text(), nullable=False),
        sa.Column('against', sa.Text(), server_default='canary', nullable=False),
        sa.Column('path', sa.Text(), nullable=False),
        sa.Column('field', sa.Text(), nullable=False),
        sa.Column('kind', sa.Text(), nullable=False),
        sa.Column('primary_value', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column('other_value', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column('judgement', sa.Text(), nullable=False),
        sa.Column('rule', sa.Text(), nullable=True),
    ]
    return cols


OLD_EXCHANGE_COLUMNS = [c.name for c in _exchange_columns(False)]
DIFFERENCE_COLUMNS = [c.name for c in _difference_columns()]


def _lz4(table: str) -> None:
    # As 0001: only where the server has lz4; new partitions inherit the parent's setting.
    alters = ', '.join(f'ALTER COLUMN {c} SET COMPRESSION lz4' for c in TOASTED)
    op.execute(
        "DO $$ BEGIN "
        "IF EXISTS (SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' "
        "AND 'lz4' = ANY(enumvals)) THEN "
        f"ALTER TABLE {table} {alters}; "
        "END IF; END $$"
    )


def _set_aside(table: str, indexes: Sequence[str], constraints: Sequence[str]) -> str:
    """Rename ``table`` (and its identity sequence) out of the way, its indexes and keys
    dropped (their names are the new table's); returns the new name."""
    old = f'{table}_old'
    for name in indexes:
        op.drop_index(name, table_name=table)
    for name in constraints:
        op.execute(f'ALTER TABLE {table} DROP CONSTRAINT {name}')
    op.execute(f'ALTER TABLE {table} RENAME TO {old}')
    op.execute(f"ALTER SEQUENCE {table}_id_seq RENAME TO {old}_id_seq")
    return old


def _copy(table: str, old: str, columns: Sequence[str]) -> None:
    cols = ', '.join(columns)
    op.execute(f'INSERT INTO {table} ({cols}) SELECT {cols} FROM {old}')
    op.execute(
        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), last_value, is_called) "
        f'FROM {old}_id_seq'
    )
    op.execute(f'DROP TABLE {old}')


def _exchange_indexes(unjudged_where: sa.TextClause, new: bool) -> None:
    op.create_index('ix_exchanges_run_id_unjudged', 'exchanges', ['run_id', 'id'], unique=False, postgresql_where=unjudged_where)
    if not new:
        op.create_index('ix_exchanges_run_id_id', 'exchanges', ['run_id', 'id'], unique=False)
    include = VERDICT_INCLUDE + (['body_digest_only'] if new else [])
    op.create_index('ix_exchanges_verdict_counts', 'exchanges', ['run_id', 'endpoint', 'outcome'], unique=False, postgresql_include=include)


def _difference_indexes() -> None:
    op.create_index('ix_differences_exchange_id', 'differences', ['exchange_id'], unique=False)
    op.create_index('ix_differences_field_counts', 'differences', ['run_id', 'endpoint', 'field', 'against', 'judgement', 'exchange_id'], unique=False)


def upgrade() -> None:
    op.drop_constraint('fk_differences_exchange_id_exchanges', 'differences', type_='foreignkey')
    old_ex = _set_aside(
        'exchanges',
        ['ix_exchanges_run_id_unjudged', 'ix_exchanges_run_id_id', 'ix_exchanges_verdict_counts'],
        ['uq_exchanges_trace_id_run_id_span_id', 'pk_exchanges', 'fk_exchanges_run_id_runs'],
    )
    old_diff = _set_aside(
        'differences',
        ['ix_differences_exchange_id', 'ix_differences_field_counts'],
        ['pk_differences'],
    )
    # Keys and indexes come after the copy (one build each, not one update per row).
    op.create_table('exchanges',
    *_exchange_columns(True),
    postgresql_partition_by='LIST (run_id)',
    )
    _lz4('exchanges')
    op.create_table('differences',
    *_difference_columns(),
    postgresql_partition_by='LIST (run_id)',
    )
    # One partition of each per run, every run (closed ones hold data too).
    op.execute(
        "DO $$ DECLARE r bigint; BEGIN "
        "FOR r IN SELECT id FROM runs ORDER BY id LOOP "
        "EXECUTE format('CREATE TABLE exchanges_r%s PARTITION OF exchanges FOR VALUES IN (%s)', r, r); "
        "EXECUTE format('CREATE TABLE differences_r%s PARTITION OF differences FOR VALUES IN (%s)', r, r); "
        "END LOOP; END $$"
    )
    _copy('exchanges', old_ex, OLD_EXCHANGE_COLUMNS)
    _copy('differences', old_diff, DIFFERENCE_COLUMNS)
    op.create_primary_key('pk_exchanges', 'exchanges', ['run_id', 'id'])
    op.create_unique_constraint('uq_exchanges_trace_id_run_id_span_id', 'exchanges', ['trace_id', 'run_id', 'span_id'])
    op.create_foreign_key(
        'fk_exchanges_run_id_runs', 'exchanges', 'runs', ['run_id'], ['id'], ondelete='CASCADE'
    )
    _exchange_indexes(sa.text('judged_at IS NULL'), True)
    op.create_primary_key('pk_differences', 'differences', ['run_id', 'id'])
    _difference_indexes()

    # Staged outcomes of a re-judgement, keyed by run too.
    op.add_column('rejudge_outcomes', sa.Column('run_id', sa.BigInteger(), nullable=True))
    op.execute(
        'UPDATE rejudge_outcomes o SET run_id = j.run_id FROM rejudges j WHERE j.id = o.rejudge_id'
    )
    op.alter_column('rejudge_outcomes', 'run_id', nullable=False)
    op.drop_constraint('pk_rejudge_outcomes', 'rejudge_outcomes', type_='primary')
    op.create_primary_key('pk_rejudge_outcomes', 'rejudge_outcomes', ['run_id', 'rejudge_id', 'exchange_id'])

    op.create_table('run_versions',
    sa.Column('run_id', sa.BigInteger(), nullable=False),
    sa.Column('role', sa.Text(), nullable=False),
    sa.Column('version', sa.Text(), nullable=False),
    sa.Column('exchanges', sa.BigInteger(), nullable=False),
    sa.Column('first_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_run_versions_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'role', 'version', name=op.f('pk_run_versions'))
    )


def downgrade() -> None:
    op.drop_table('run_versions')

    op.drop_constraint('pk_rejudge_outcomes', 'rejudge_outcomes', type_='primary')
    op.drop_column('rejudge_outcomes', 'run_id')
    op.create_primary_key('pk_rejudge_outcomes', 'rejudge_outcomes', ['rejudge_id', 'exchange_id'])

    old_ex = _set_aside(
        'exchanges',
        ['ix_exchanges_run_id_unjudged', 'ix_exchanges_verdict_counts'],
        ['uq_exchanges_trace_id_run_id_span_id', 'pk_exchanges', 'fk_exchanges_run_id_runs'],
    )
    old_diff = _set_aside(
        'differences',
        ['ix_differences_exchange_id', 'ix_differences_field_counts'],
        ['pk_differences'],
    )
    op.create_table('exchanges',
    *_exchange_columns(False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_exchanges_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_exchanges')),
    sa.UniqueConstraint('trace_id', 'run_id', 'span_id', name='uq_exchanges_trace_id_run_id_span_id'),
    )
    _lz4('exchanges')
    op.create_table('differences',
    *_difference_columns(),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_differences')),
    )
    _copy('exchanges', old_ex, OLD_EXCHANGE_COLUMNS)
    _copy('differences', old_diff, DIFFERENCE_COLUMNS)
    op.create_foreign_key(
        'fk_differences_exchange_id_exchanges', 'differences', 'exchanges',
        ['exchange_id'], ['id'], ondelete='CASCADE',
    )
    _exchange_indexes(sa.text('judged_at IS NULL'), False)
    _difference_indexes()
