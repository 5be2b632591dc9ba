"""SQLAlchemy Core tables: the one description of graygate's schema.

Alembic autogenerates migrations from ``metadata``; ``alembic check`` in CI proves that the
migrations and this module agree.
"""

from __future__ import annotations

from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from graygate.vocabulary import (
    Against,
    DiffKind,
    Judgement,
    LossReason,
    Outcome,
    Role,
    SkipReason,
    WaiverAction,
    WaiverSource,
)

__all__ = [
    "PARTITIONED",
    "ROLES",
    "TRASH_SCHEMA",
    "differences",
    "exchange_of",
    "exchanges",
    "metadata",
    "preflight_findings",
    "rejudge_differences",
    "rejudge_outcomes",
    "rejudges",
    "run_losses",
    "run_versions",
    "runs",
    "runtime_samples",
    "spill_replays",
    "trash",
    "verdicts",
    "waiver_events",
    "waivers",
]

ROLES: tuple[Role, ...] = tuple(Role)


def _one_of(vocabulary: type[StrEnum], what: str) -> str:
    """A text column's ``doc``: what it holds and its values, read off the enum (Python-side
    only: not in the DDL, so migrations do not see it)."""
    return f"{what}: {' | '.join(vocabulary)} (graygate.vocabulary.{vocabulary.__name__})"


metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

_now = sa.text("now()")

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("primary_url", sa.Text),
    sa.Column("canary_url", sa.Text),
    sa.Column("primary_version", sa.Text),
    sa.Column("canary_version", sa.Text),
    # The configuration that judges the run (the latest one a process started with).
    sa.Column("config", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    # Set by `graygate runs close` (migration 0004): exchanges for the run are no longer
    # stored (store.exchanges drops them at write and counts them as run_closed losses).
    sa.Column("closed_at", sa.DateTime(timezone=True)),
)


def _role_columns(role: str) -> list[sa.Column[object]]:
    return [
        sa.Column(f"{role}_status", sa.SmallInteger),
        sa.Column(f"{role}_headers", JSONB),
        sa.Column(f"{role}_body", sa.LargeBinary),
        sa.Column(f"{role}_body_truncated", sa.Boolean, nullable=False, server_default="false"),
        # sha256 of the body when the body itself was not kept (record.bodies.sample,
        # migration 0006); NULL when the body is stored.
        sa.Column(f"{role}_body_sha256", sa.LargeBinary),
        sa.Column(f"{role}_latency_ms", sa.Float),
        # timeout | refused | reset | error; NULL when the upstream answered
        sa.Column(f"{role}_error", sa.Text),
    ]


# Exchanges and their differences are partitioned by run (migration 0006): one partition
# of each per run, named by store.partitions (exchanges_r<run id>), created when the run is
# and dropped with it; a run's rows are never deleted one by one. A partitioned table's
# unique keys must hold its partition key, so every key here holds run_id (which is also
# what a distributed PostgreSQL, Citus, shards them by: docs/ARCHITECTURE.md); the
# exchange's own key holds its trace id too.
exchanges = sa.Table(
    "exchanges",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
    sa.Column(
        "run_id", sa.BigInteger, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("trace_id", sa.Text, nullable=False),
    sa.Column("span_id", sa.Text, nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("endpoint", sa.Text, nullable=False),
    sa.Column("method", sa.Text, nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("query", sa.Text, nullable=False, server_default=""),
    sa.Column("request_headers", JSONB),
    sa.Column("request_body", sa.LargeBinary),
    sa.Column("request_body_truncated", sa.Boolean, nullable=False, server_default="false"),
    sa.Column("gray_label", sa.Text),
    sa.Column(
        "served_by", sa.Text, nullable=False, doc=_one_of(Role, "which side answered the client")
    ),
    # NULL when the other side was mirrored.
    sa.Column(
        "mirror_skipped", sa.Text, doc=_one_of(SkipReason, "why the other side got no mirror")
    ),
    *(c for role in ROLES for c in _role_columns(role)),
    # Judgement, filled by the diff workers.
    sa.Column("judged_at", sa.DateTime(timezone=True)),
    sa.Column("outcome", sa.Text, doc=_one_of(Outcome, "what the diff workers made of it")),
    sa.Column("strict_mismatches", sa.Integer),
    sa.Column("tolerance_violations", sa.Integer),
    sa.Column("noise_differences", sa.Integer),
    # The answers' bodies were replaced by their digests (record.bodies.sample); the
    # verdict counts the pairs judged that way.
    sa.Column("body_digest_only", sa.Boolean, nullable=False, server_default="false"),
    sa.PrimaryKeyConstraint("run_id", "id", name="pk_exchanges"),
    # One row per exchange (the span id is the proxy's own, new per request): the writer's
    # replay after a database outage, or after a crash mid-replay, inserts with ON CONFLICT
    # DO NOTHING on this key, so nothing is written twice. Led by trace_id, it also serves
    # lookups by trace id (a separate trace_id index would cost ~20% of COPY throughput).
    sa.UniqueConstraint(
        "trace_id", "run_id", "span_id", name="uq_exchanges_trace_id_run_id_span_id"
    ),
    # Judgement (migration 0002): the diff workers' claim (a run's unjudged exchanges, oldest
    # first), the verdict's latency sample (a run's most recent pairs), and the verdict's
    # per-endpoint counts as an index-only scan (a tenth of the table's bytes to read).
    sa.Index(
        "ix_exchanges_run_id_unjudged",
        "run_id",
        "id",
        postgresql_where=sa.text("judged_at IS NULL"),
    ),
    sa.Index(
        "ix_exchanges_verdict_counts",
        "run_id",
        "endpoint",
        "outcome",
        postgresql_include=[
            "noise_differences",
            "strict_mismatches",
            "tolerance_violations",
            "primary_status",
            "canary_status",
            "primary_error",
            "canary_error",
            "body_digest_only",
        ],
    ),
    postgresql_partition_by="LIST (run_id)",
)

# No foreign key to exchanges: a run's differences go with its exchanges (their partitions
# are dropped together), and a key between two partitioned tables would make attaching and
# detaching a partition lock and check the other table.
differences = sa.Table(
    "differences",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
    sa.Column("exchange_id", sa.BigInteger, nullable=False),
    sa.Column("run_id", sa.BigInteger, nullable=False),
    sa.Column("endpoint", sa.Text, nullable=False),
    # canary: primary vs canary; secondary: primary vs secondary (the noise baseline)
    sa.Column("against", sa.Text, nullable=False, server_default=Against.CANARY.value),
    # A concrete path ($.items[2].price) and its rule-level form ($.items[*].price).
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("field", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False, doc=_one_of(DiffKind, "the kind of difference")),
    sa.Column("primary_value", JSONB),
    sa.Column("other_value", JSONB),
    sa.Column("judgement", sa.Text, nullable=False, doc=_one_of(Judgement, "how it was judged")),
    sa.Column("rule", sa.Text),
    # The verdict's field counts stream over this in key order (count(DISTINCT exchange_id)
    # per endpoint, field, side and judgement without a sort); its prefix serves lookups by
    # (run_id, endpoint, field).
    sa.Index(
        "ix_differences_field_counts",
        "run_id",
        "endpoint",
        "field",
        "against",
        "judgement",
        "exchange_id",
    ),
    sa.Index("ix_differences_exchange_id", "exchange_id"),
    sa.PrimaryKeyConstraint("run_id", "id", name="pk_differences"),
    postgresql_partition_by="LIST (run_id)",
)

# The tables partitioned by run (store.partitions makes and drops their partitions).
PARTITIONED: tuple[sa.Table, ...] = (exchanges, differences)


def exchange_of(d: sa.FromClause, e: sa.FromClause = exchanges) -> sa.ColumnElement[bool]:
    """The join of a difference (a row of ``d``) to its exchange: by run and id, so that
    PostgreSQL reads one run's partition of each (the id alone would probe them all)."""
    return sa.and_(e.c.run_id == d.c.run_id, e.c.id == d.c.exchange_id)


run_losses = sa.Table(
    "run_losses",
    metadata,
    sa.Column(
        "run_id", sa.BigInteger, sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    ),
    # Counted by the recorder's loss ledger (proxy.recording.ledger, which says when).
    sa.Column(
        "reason",
        sa.Text,
        primary_key=True,
        doc=_one_of(LossReason, "why the exchanges were not recorded"),
    ),
    sa.Column("count", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
)

# Spill segments whose loss counters were added to run_losses: replaying a segment adds its
# counters in the same transaction as this row, so a crash before the file is deleted never
# counts them twice.
spill_replays = sa.Table(
    "spill_replays",
    metadata,
    sa.Column("segment", sa.Text, primary_key=True),
    sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
)

verdicts = sa.Table(
    "verdicts",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column(
        "run_id", sa.BigInteger, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("verdict", sa.Text, nullable=False),  # GO | NO_GO | INCONCLUSIVE
    sa.Column("checks", JSONB, nullable=False),
    sa.Index("ix_verdicts_run_id_computed_at", "run_id", "computed_at"),
)

runtime_samples = sa.Table(
    "runtime_samples",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column(
        "run_id", sa.BigInteger, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("role", sa.Text, nullable=False),  # primary | canary
    sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("source", sa.Text, nullable=False),  # expvar | prometheus
    sa.Column("goroutines", sa.Integer),
    sa.Column("heap_alloc", sa.BigInteger),
    sa.Column("heap_inuse", sa.BigInteger),
    sa.Column("num_gc", sa.BigInteger),
    sa.Column("gc_cpu_fraction", sa.Float),
    # GC pauses (ns) that ended since the previous sample.
    sa.Column("pauses_ns", sa.ARRAY(sa.BigInteger)),
    sa.Column("error", sa.Text),
    sa.Index("ix_runtime_samples_run_id_role_taken_at", "run_id", "role", "taken_at"),
)

preflight_findings = sa.Table(
    "preflight_findings",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column(
        "run_id", sa.BigInteger, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("check", sa.Text, nullable=False),  # e.g. canary.health, canary.pprof_exposed
    sa.Column("ok", sa.Boolean, nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
)

# Waivers (migration 0003): a person's (or the configuration's) acceptance of the canary's
# differences at one field. It applies to its run, or, with a scope, to every run whose
# name matches the glob; it stops applying when revoked or past expires_at (read at each
# evaluation). Rows are never deleted by graygate: revoking sets revoked_*; deleting the
# run a waiver was added to keeps a scoped waiver (run_id becomes NULL).
waivers = sa.Table(
    "waivers",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("run_id", sa.BigInteger, sa.ForeignKey("runs.id", ondelete="SET NULL")),
    # The run's name when it was added (kept when the run is deleted).
    sa.Column("run_name", sa.Text, nullable=False),
    sa.Column("scope", sa.Text),  # a glob over run names; NULL: run_id only
    sa.Column("endpoint", sa.Text, nullable=False),  # a glob over endpoints
    sa.Column("field", sa.Text, nullable=False),  # a rule path, or status / body / header:NAME
    sa.Column("kind", sa.Text, doc=_one_of(DiffKind, "the kind waived; NULL: any")),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("source", sa.Text, nullable=False, doc=_one_of(WaiverSource, "where it was made")),
    sa.Column("created_by", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
    sa.Column("revoked_by", sa.Text),
    sa.Column("revoke_reason", sa.Text),
    sa.Index("ix_waivers_run_id", "run_id"),
)

# The waivers' audit trail: append-only (graygate never updates or deletes a row), and
# self-contained: what the waiver was is copied into ``waiver``, so the trail survives the
# run's deletion.
waiver_events = sa.Table(
    "waiver_events",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("waiver_id", sa.BigInteger, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("action", sa.Text, nullable=False, doc=_one_of(WaiverAction, "what was done")),
    sa.Column("by", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("waiver", JSONB, nullable=False),
    sa.Index("ix_waiver_events_waiver_id", "waiver_id"),
)

# Re-judging (migration 0005): `graygate rejudge RUN` queues a job with the compare rules
# to apply; diff workers judge the run's exchanges up to max_exchange_id again, one batch
# per transaction (the cursor next_id moves in the same transaction, so a crash loses
# nothing), into the staging tables below; the last batch's transaction replaces the run's
# differences and outcomes with the staged ones at once. Each completed job is an entry of
# the run's config history: its rules judged every verdict computed after completed_at
# (until the next one); previous_compare holds the rules before it.
rejudges = sa.Table(
    "rejudges",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column(
        "run_id", sa.BigInteger, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("compare", JSONB, nullable=False),
    sa.Column("previous_compare", JSONB, nullable=False),
    sa.Column("requested_by", sa.Text, nullable=False),
    sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("max_exchange_id", sa.BigInteger, nullable=False),
    sa.Column("next_id", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("total", sa.BigInteger, nullable=False),
    sa.Column("judged", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("completed_at", sa.DateTime(timezone=True)),
    sa.Column("cancelled_at", sa.DateTime(timezone=True)),
    sa.Index("ix_rejudges_run_id", "run_id"),
)

rejudge_outcomes = sa.Table(
    "rejudge_outcomes",
    metadata,
    sa.Column("run_id", sa.BigInteger, primary_key=True),
    sa.Column(
        "rejudge_id",
        sa.BigInteger,
        sa.ForeignKey("rejudges.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("exchange_id", sa.BigInteger, primary_key=True),
    sa.Column("outcome", sa.Text, nullable=False),
    sa.Column("strict_mismatches", sa.Integer),
    sa.Column("tolerance_violations", sa.Integer),
    sa.Column("noise_differences", sa.Integer),
)

rejudge_differences = sa.Table(
    "rejudge_differences",
    metadata,
    sa.Column(
        "rejudge_id",
        sa.BigInteger,
        sa.ForeignKey("rejudges.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("exchange_id", sa.BigInteger, nullable=False),
    sa.Column("run_id", sa.BigInteger, nullable=False),
    sa.Column("endpoint", sa.Text, nullable=False),
    sa.Column("against", sa.Text, nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("field", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("primary_value", JSONB),
    sa.Column("other_value", JSONB),
    sa.Column("judgement", sa.Text, nullable=False),
    sa.Column("rule", sa.Text),
    sa.Index("ix_rejudge_differences_rejudge_id", "rejudge_id"),
)

# The versions each side's answers named in the response header ``versions.header``
# (migration 0006): one row per run, side and version, with how many exchanges carried it
# and when it was first and last seen. More than one version of a side means it changed
# while the run was recorded (the report and the API say so); the first one seen fills
# ``runs.<side>_version`` when the configuration named none.
run_versions = sa.Table(
    "run_versions",
    metadata,
    sa.Column(
        "run_id", sa.BigInteger, sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("role", sa.Text, primary_key=True, doc=_one_of(Role, "whose answers")),
    sa.Column("version", sa.Text, primary_key=True),
    sa.Column("exchanges", sa.BigInteger, nullable=False),
    sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
)

# Deleted runs' partitions waiting to be dropped (migration 0007): ``graygate runs delete``
# moves them to the schema TRASH_SCHEMA and records each here in the transaction that
# deletes the run; the reaper (store.trash) drops the table and its row. ``bytes`` is its
# size when it was trashed; no foreign key: the run is gone.
TRASH_SCHEMA = "graygate_trash"
trash = sa.Table(
    "trash",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("relname", sa.Text, nullable=False, unique=True),  # its name in TRASH_SCHEMA
    sa.Column("run_id", sa.BigInteger, nullable=False),
    sa.Column("run_name", sa.Text, nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("trashed_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
)
