"""Recording exchanges, in small parts that the recorder (``proxy.recorder.Recorder``)
composes, each testable without PostgreSQL:

- ``batching``: the bounded queue, cut into batches by size or time
- ``health``: is the database up; when it is not, when to probe it again (backoff)
- ``ledger``: the loss counters per run and reason, flushed to ``run_losses`` or the spill
- ``spilling``: rows to the spill while the database is away, and their replay
- ``intents``: what this process accepted but has not yet written, on disk, so that the next
  process counts what a killed one lost
- ``series``: the Prometheus series they share
- ``building``: an exchange's record, built from what the request path captured (plain
  values in, no I/O)
- ``version_tally``: the versions the answers name in ``versions.header``, per run and side
"""
