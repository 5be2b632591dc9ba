"""The shared vocabulary is the one list of each closed set of names: the constants that
modules keep under their own names, and what the schema documents, are its members."""

from __future__ import annotations

from graygate.vocabulary import LossReason, Outcome, SkipReason
from proxy import app, mirror, routing
from proxy.recording import ledger
from store.tables import exchanges, run_losses


def test_loss_reasons_are_the_ledgers() -> None:
    assert ledger.REASONS == tuple(LossReason)
    assert ledger.PROCESS_KILLED is LossReason.PROCESS_KILLED
    # Prometheus only (no run to charge): not a stored reason.
    assert ledger.SPILL_CORRUPT not in set(LossReason)


def test_every_skip_reason_the_proxy_records_is_a_skip_reason() -> None:
    named = {
        routing.SKIP_DISABLED,
        routing.SKIP_METHOD,
        routing.SKIP_SAMPLED_OUT,
        routing.SKIP_BODY_TOO_LARGE,
        routing.SKIP_SATURATED,
        app.SKIP_UPGRADE,
        app.SKIP_CLIENT_ABORTED,
        app.SKIP_METHOD_NOT_MIRRORED,
        mirror.SKIP_EJECTED,
    }
    # ... and the one the write checker records (diff.write_compare.write_record).
    assert named | {SkipReason.NOT_WRITE_CHECKED} == set(SkipReason)


def test_the_schema_documents_each_vocabulary_from_the_enum() -> None:
    reason_doc = run_losses.c.reason.doc or ""
    assert all(r.value in reason_doc for r in LossReason), reason_doc
    skipped_doc = exchanges.c.mirror_skipped.doc or ""
    assert all(s.value in skipped_doc for s in SkipReason), skipped_doc
    outcome_doc = exchanges.c.outcome.doc or ""
    assert all(o.value in outcome_doc for o in Outcome), outcome_doc
