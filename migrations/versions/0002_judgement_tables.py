"""judgement: differences, verdicts, runtime samples, preflight findings

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision: str = '0002'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('preflight_findings',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('run_id', sa.BigInteger(), nullable=False),
    sa.Column('checked_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('check', sa.Text(), nullable=False),
    sa.Column('ok', sa.Boolean(), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_preflight_findings_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_preflight_findings'))
    )
    op.create_table('runtime_samples',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('run_id', sa.BigInteger(), nullable=False),
    sa.Column('role', sa.Text(), nullable=False),
    sa.Column('taken_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('goroutines', sa.Integer(), nullable=True),
    sa.Column('heap_alloc', sa.BigInteger(), nullable=True),
    sa.Column('heap_inuse', sa.BigInteger(), nullable=True),
    sa.Column('num_gc', sa.BigInteger(), nullable=True),
    sa.Column('gc_cpu_fraction', sa.Float(), nullable=True),
    sa.Column('pauses_ns', sa.ARRAY(sa.BigInteger()), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_runtime_samples_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_runtime_samples'))
    )
    op.create_index('ix_runtime_samples_run_id_role_taken_at', 'runtime_samples', ['run_id', 'role', 'taken_at'], unique=False)
    op.create_table('verdicts',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('run_id', sa.BigInteger(), nullable=False),
    sa.Column('computed_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('verdict', sa.Text(), nullable=False),
    sa.Column('checks', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_verdicts_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_verdicts'))
    )
    op.create_index('ix_verdicts_run_id_computed_at', 'verdicts', ['run_id', 'computed_at'], unique=False)
    op.create_table('differences',
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
    sa.ForeignKeyConstraint(['exchange_id'], ['exchanges.id'], name=op.f('fk_differences_exchange_id_exchanges'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_differences'))
    )
    op.create_index('ix_differences_exchange_id', 'differences', ['exchange_id'], unique=False)
    op.create_index('ix_differences_field_counts', 'differences', ['run_id', 'endpoint', 'field', 'against', 'judgement', 'exchange_id'], unique=False)
    # Indexes on 0001's exchanges that the judgement needs: the workers' claim and the
    # verdict's latency sample.
    op.create_index('ix_exchanges_run_id_unjudged', 'exchanges', ['run_id', 'id'], unique=False, postgresql_where=sa.text('judged_at IS NULL'))
    op.create_index('ix_exchanges_run_id_id', 'exchanges', ['run_id', 'id'], unique=False)
    op.create_index('ix_exchanges_verdict_counts', 'exchanges', ['run_id', 'endpoint', 'outcome'], unique=False, postgresql_include=['noise_differences', 'strict_mismatches', 'tolerance_violations', 'primary_status', 'canary_status', 'primary_error', 'canary_error'])


def downgrade() -> None:
    op.drop_index('ix_exchanges_verdict_counts', table_name='exchanges', postgresql_include=['noise_differences', 'strict_mismatches', 'tolerance_violations', 'primary_status', 'canary_status', 'primary_error', 'canary_error'])
    op.drop_index('ix_exchanges_run_id_id', table_name='exchanges')
    op.drop_index('ix_exchanges_run_id_unjudged', table_name='exchanges', postgresql_where=sa.text('judged_at IS NULL'))
    op.drop_index('ix_differences_field_counts', table_name='differences')
    op.drop_index('ix_differences_exchange_id', table_name='differences')
    op.drop_table('differences')
    op.drop_index('ix_verdicts_run_id_computed_at', table_name='verdicts')
    op.drop_table('verdicts')
    op.drop_index('ix_runtime_samples_run_id_role_taken_at', table_name='runtime_samples')
    op.drop_table('runtime_samples')
    op.drop_table('preflight_findings')
