"""graygate's shared vocabulary: the closed sets of names that cross packages.

Each is a ``StrEnum``: a member compares equal to its string, formats as it, and is stored
as it (``exchanges.outcome``, ``differences.judgement``, ``run_losses.reason``, ...), so the
database and the JSON API see plain strings. A bottom module: it imports nothing of graygate.

========== ===================================================================== ==============
enum       values                                                                stored in
========== ===================================================================== ==============
Role       primary, canary, secondary                                            exchanges
Outcome    match, differ, noise_only (pairs); unjudgeable; skipped; error        exchanges
Judgement  strict, tolerance, noise, waived, unjudgeable                         differences
DiffKind   value, type, missing, extra, order, length, status, header, body      differences
Against    canary, secondary (the side a difference was found against)           differences
ErrorKind  timeout, refused, reset, error (an upstream's transport failure)      exchanges
LossReason queue_full, spill_full, spill_error, database_unavailable,            run_losses
           encode_error, rejected, closed, process_killed, run_closed
           (why an exchange was not recorded)
SkipReason disabled, method, sampled_out, body_too_large, saturated,             exchanges
           upgrade_not_mirrored, client_aborted, method_not_mirrored
           (why the other side got no mirror)
========== ===================================================================== ==============

Governance: ``WaiverAction`` (add, revoke; ``waiver_events.action``), ``WaiverSource``
(cli, api, config; ``waivers.source``), ``TokenRole`` (read, write; an admin token's role).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

__all__ = [
    "ATTEMPTED_OUTCOMES",
    "FAILURE_JUDGEMENTS",
    "PAIR_OUTCOMES",
    "Against",
    "DiffKind",
    "ErrorKind",
    "Judgement",
    "LossReason",
    "Outcome",
    "Role",
    "SkipReason",
    "TokenRole",
    "WaiverAction",
    "WaiverSource",
]


class Role(StrEnum):
    """An upstream's part in a run."""

    PRIMARY = "primary"  # the stable service: the reference
    CANARY = "canary"  # the service being judged
    SECONDARY = "secondary"  # a second primary: shows which fields differ by nature


class Against(StrEnum):
    """The side a stored difference was found against (the primary is always the other)."""

    CANARY = "canary"
    SECONDARY = "secondary"  # the noise baseline


class Outcome(StrEnum):
    """What the diff workers made of one exchange."""

    MATCH = "match"  # a pair, no difference
    DIFFER = "differ"  # a pair with a strict or tolerance difference
    NOISE_ONLY = "noise_only"  # a pair whose every difference was noise
    # both answered, nothing certain differs, but a body recorded truncated left part of
    # the answer unjudged: not a pair (never a match); counted by the verdict's judgeable check
    UNJUDGEABLE = "unjudgeable"
    SKIPPED = "skipped"  # nothing to compare (not mirrored, or a side left no trace)
    ERROR = "error"  # a side failed in transport (or the comparison failed): no pair


# Both the primary and the canary answered and were compared.
PAIR_OUTCOMES: Final = (Outcome.MATCH, Outcome.DIFFER, Outcome.NOISE_ONLY)
# Both sides were asked: the population of the error-rate check.
ATTEMPTED_OUTCOMES: Final = (*PAIR_OUTCOMES, Outcome.UNJUDGEABLE, Outcome.ERROR)


class Judgement(StrEnum):
    """How one difference was judged."""

    STRICT = "strict"  # must be equal
    TOLERANCE = "tolerance"  # a numeric bound exceeded
    NOISE = "noise"  # the secondary differs there too: differs by nature
    WAIVED = "waived"  # accepted by a person (a waiver)
    UNJUDGEABLE = "unjudgeable"  # a body recorded truncated: its cut part cannot be judged


# Judgements that count against the canary; the rest (noise, waived) are accepted.
FAILURE_JUDGEMENTS: Final = (Judgement.STRICT, Judgement.TOLERANCE)


class DiffKind(StrEnum):
    """What kind of difference one field shows."""

    VALUE = "value"
    TYPE = "type"
    MISSING = "missing"  # in the primary's answer, not in the other
    EXTRA = "extra"  # in the other answer, not in the primary's
    ORDER = "order"
    LENGTH = "length"
    STATUS = "status"
    HEADER = "header"
    BODY = "body"  # bodies that are not JSON differ as a whole


class ErrorKind(StrEnum):
    """How an upstream failed to answer (recorded in place of the answer)."""

    TIMEOUT = "timeout"
    REFUSED = "refused"  # connect failed: refused, DNS, unreachable
    RESET = "reset"  # the connection broke during the exchange
    ERROR = "error"  # a malformed answer, or anything else


class LossReason(StrEnum):
    """Why an exchange was not recorded (counted in ``run_losses``; the recorder's loss
    ledger, ``proxy.recording.ledger``, says when each is counted)."""

    QUEUE_FULL = "queue_full"  # the recorder's queue was full
    SPILL_FULL = "spill_full"  # the database was away and the spill full
    SPILL_ERROR = "spill_error"  # the database was away and the spill failed to write
    DATABASE_UNAVAILABLE = "database_unavailable"  # the database was away, no spill
    ENCODE_ERROR = "encode_error"  # the record could not be made a row
    REJECTED = "rejected"  # PostgreSQL refused the row itself
    CLOSED = "closed"  # submitted after the recorder stopped accepting
    PROCESS_KILLED = "process_killed"  # accepted by a process killed before writing it
    RUN_CLOSED = "run_closed"  # its run was closed (graygate runs close): dropped at write


class SkipReason(StrEnum):
    """Why the other side of an exchange got no mirror (``exchanges.mirror_skipped``)."""

    DISABLED = "disabled"
    METHOD = "method"
    SAMPLED_OUT = "sampled_out"
    BODY_TOO_LARGE = "body_too_large"
    SATURATED = "saturated"
    UPGRADE_NOT_MIRRORED = "upgrade_not_mirrored"  # a protocol upgrade (WebSocket) tunnel
    CLIENT_ABORTED = "client_aborted"  # the client broke off its request body
    METHOD_NOT_MIRRORED = "method_not_mirrored"  # shadow mode: a method not fanned out
    # A mirror target broke its answers (consecutive broken ones): ejected for a while
    # (mirror.eject; proxy/ejection.py), so this exchange's other side was never asked.
    EJECTED = "ejected"
    # A write check's record (WRITE <name>) of an exchange it did not compare: the canary
    # served it (its writes went to the real tables), or a side failed in transport.
    NOT_WRITE_CHECKED = "not_write_checked"


class WaiverAction(StrEnum):
    """What one entry of the waivers' audit trail (``waiver_events``) records."""

    ADD = "add"
    REVOKE = "revoke"


class WaiverSource(StrEnum):
    """Where a waiver was made (``waivers.source``)."""

    CLI = "cli"  # graygate waiver add
    API = "api"  # POST /api/v1/runs/{run}/waivers
    CONFIG = "config"  # the configuration's waivers: list, reviewed as code


class TokenRole(StrEnum):
    """What an admin token may do: ``read`` verdicts and reports; ``write`` also waivers,
    closing, deleting and re-judging runs."""

    READ = "read"
    WRITE = "write"
