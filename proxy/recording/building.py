"""An exchange's record: what the request path captured, made storable.

:meth:`RecordBuilder.build` turns a finished ``proxy.exchange.Exchange`` into the
``graygate.values.RecordedExchange`` the recorder stores: each side's body decoded
(``proxy.codec``, bounded by ``record.max_body_bytes``) and redacted (``proxy.redact``), the
request's too; the endpoint named (``diff.endpoints``); header fields made storable text
(bytes outside UTF-8 written ``\\xNN``), hop-by-hop ones left out of the answers; what
became of the client in ``extra``.

Plain values in, a plain value out: no server, no event loop, no aiohttp. The proxy calls
it once per exchange, after the serving side is done (``proxy.exchange.Completion``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from diff.endpoints import EndpointMatcher
from graygate.values import Answer, RecordedExchange
from graygate.vocabulary import Role
from proxy.codec import decode_body
from proxy.headers import HOP_BY_HOP
from proxy.redact import Redactor

if TYPE_CHECKING:
    from config.schema import GraygateConfig, RecordConfig, RedactConfig
    from proxy.capture import Capture
    from proxy.exchange import Exchange

__all__ = ["RecordBuilder"]


class RecordBuilder:
    """Builds the records of one run under one configuration (redaction, endpoints, the
    record's body bound)."""

    __slots__ = ("_limit", "_matcher", "_redactor", "_run_id")

    def __init__(
        self,
        run_id: int,
        redact: RedactConfig,
        record: RecordConfig,
        endpoints: Sequence[str] = (),
    ) -> None:
        self._run_id = run_id
        self._redactor = Redactor(redact)
        self._matcher = EndpointMatcher(list(endpoints))
        self._limit = record.max_body_bytes

    @property
    def run_id(self) -> int:
        return self._run_id

    @classmethod
    def from_config(cls, cfg: GraygateConfig, run_id: int) -> RecordBuilder:
        return cls(run_id, cfg.redact, cfg.record, [e.match for e in cfg.compare.endpoints])

    def build(self, ex: Exchange) -> RecordedExchange:
        """The record of ``ex``."""
        tags = ex.tags
        redact = self._redactor
        req_body: bytes | None = None
        req_truncated = False
        if ex.request is not None:
            decoded, cut = decode_body(ex.request.body, ex.request_encoding, self._limit)
            req_body = redact.body(decoded, ex.request_type)
            req_truncated = ex.request.truncated or cut
        caps = ex.captures
        return RecordedExchange(
            run_id=self._run_id,
            trace_id=tags.trace_id,
            span_id=tags.span_id,
            received_at=datetime.fromtimestamp(ex.received_at, UTC),
            endpoint=self._matcher.endpoint(ex.method, ex.path),
            method=ex.method,
            path=ex.path,
            query=redact.query(ex.query),
            request_headers=redact.headers(ex.headers),
            request_body=req_body,
            request_body_truncated=req_truncated,
            gray_label=ex.label,
            served_by=ex.served_by,
            mirror_skipped=ex.mirror_skipped,
            primary=self._answer(caps.get(Role.PRIMARY)),
            canary=self._answer(caps.get(Role.CANARY)),
            secondary=self._answer(caps.get(Role.SECONDARY)),
            extra=_served_extra(caps.get(ex.served_by)),
        )

    def _answer(self, cap: Capture | None) -> Answer | None:
        if cap is None:
            return None
        latency_ms = None if cap.latency is None else cap.latency * 1000.0
        if cap.headers is None:
            return Answer(latency_ms=latency_ms, error=cap.error)
        return self.answer(
            cap.status, cap.headers, cap.body, cap.truncated, latency_ms, error=cap.error
        )

    def answer(
        self,
        status: int | None,
        headers: Mapping[str, str],
        body: bytes,
        truncated: bool,
        latency_ms: float | None,
        *,
        error: str | None = None,
    ) -> Answer:
        """One side's answer as stored: the body decoded (within the record's bound) and
        redacted, header fields redacted and made storable text (``Redactor.headers``:
        bytes outside UTF-8 written ``\\xNN``), hop-by-hop ones left out.
        The proxy's captures and ``graygate replay``'s answers both come here."""
        decoded, cut = decode_body(body, headers.get("Content-Encoding"), self._limit)
        redact = self._redactor
        return Answer(
            status=status,
            headers=redact.headers(headers.items(), HOP_BY_HOP),
            body=redact.body(decoded, headers.get("Content-Type")),
            body_truncated=truncated or cut,
            latency_ms=latency_ms,
            error=error,
        )


def _served_extra(served: Capture | None) -> dict[str, str]:
    """What the record says of the client: it went away, or it was cut off for taking no
    bytes of its answer in time (``timeouts.client_write_s``)."""
    if served is None or not served.client_gone:
        return {}
    if served.client_stalled:
        return {"client_disconnected": "true", "client_stalled": "true"}
    return {"client_disconnected": "true"}
