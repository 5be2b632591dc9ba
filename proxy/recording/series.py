"""The recorder's Prometheus series (default registry), shared by its parts."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "BATCH_SECONDS",
    "DATABASE_UP",
    "DROPPED",
    "DUPLICATES",
    "QUEUE_DEPTH",
    "RECORDED",
    "REPLAYED",
    "SPILLED",
    "SPILL_BYTES",
]

RECORDED: Final = Counter(
    "graygate_record_exchanges_recorded",
    "Exchanges written to PostgreSQL (replayed from the spill included).",
)
DROPPED: Final = Counter(
    "graygate_record_exchanges_dropped",
    "Exchanges not recorded, by reason.",
    ("reason",),
)
SPILLED: Final = Counter(
    "graygate_record_exchanges_spilled",
    "Exchanges written to the local spill while PostgreSQL was away.",
)
REPLAYED: Final = Counter(
    "graygate_record_exchanges_replayed",
    "Exchanges replayed from the spill into PostgreSQL.",
)
DUPLICATES: Final = Counter(
    "graygate_record_exchanges_duplicate",
    "Rows found already stored (a replay after an uncertain write) and skipped.",
)
QUEUE_DEPTH: Final = Gauge(
    "graygate_record_queue_depth",
    "Exchanges waiting in the recorder's queue.",
    multiprocess_mode="livesum",
)
SPILL_BYTES: Final = Gauge(
    "graygate_record_spill_bytes",
    "Bytes in the spill directory, waiting for replay (processes may share a directory).",
    multiprocess_mode="livemax",
)
DATABASE_UP: Final = Gauge(
    "graygate_record_database_up",
    "1 while the recorder writes to PostgreSQL, 0 while it spills.",
    multiprocess_mode="livemin",
)
BATCH_SECONDS: Final = Histogram(
    "graygate_record_batch_write_seconds",
    "Time to store one batch in PostgreSQL (COPY), successful writes only.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
