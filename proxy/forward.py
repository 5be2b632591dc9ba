"""Forwarding (request path step 4): one request to one upstream, its answer to the client.

- :func:`forward` sends the serving side's request through its ``Upstream``'s pool
  (``proxy.upstream_pools``) with the headers ``proxy.headers`` chose, and streams the
  answer to the client chunk by chunk (``proxy.client_answer.ClientAnswer``): 1xx heads go
  ahead of it, trailers only to a client that sent ``TE: trailers``; a protocol switch is
  handed to ``proxy.tunnel``. A bounded copy of the answer is kept for the record
  (``proxy.capture.Capture``).
- A failure before the answer's head gives the client a 502 (refused, reset, DNS) or 504
  (timeout) with a JSON body (``proxy.error_mapping``); after it, the client connection is
  closed so that a cut body is never taken for a whole one.
- :func:`fetch` sends a mirror and reads its answer within the mirror timeout, up to what
  is recorded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable
from typing import TYPE_CHECKING

from graygate.errors import UpstreamError
from proxy.capture import Capture
from proxy.client_answer import ClientAnswer
from proxy.error_mapping import ClientStalled, error_kind, error_response
from proxy.headers import accepts_trailers, client_fields, client_headers
from proxy.tunnel import switch
from proxy.upstream import UpstreamAnswer
from proxy.upstream_pools import Upstream

if TYPE_CHECKING:
    from proxy.client_answer import Answer
    from proxy.server import Request

__all__ = ["RequestBody", "fetch", "forward"]

logger = logging.getLogger(__name__)

_perf = time.perf_counter


def _client_gone(capture: Capture, exc: ConnectionError) -> None:
    capture.client_gone = True
    if isinstance(exc, ClientStalled):
        capture.client_stalled = True


RequestBody = bytes | AsyncIterable[bytes] | None


async def forward(
    request: Request,
    upstream: Upstream,
    target: str,
    headers: list[tuple[str, str]],
    body: RequestBody,
    trace_id: str,
    capture: Capture,
) -> Answer:
    """Send the request to ``upstream`` and stream its answer to the client.

    Fills ``capture`` (status, headers, bounded body, latency, error) as it goes. Never
    raises for an upstream failure or a client that went away: the first gives a 502/504
    response, the second a response that the server discards quietly.
    """
    start = _perf()
    interim = None
    if request.version >= (1, 1):
        transport = request.transport

        def interim(head: bytes) -> None:
            # 1xx answers (103 Early Hints...) go to the client as they came (RFC 9110
            # 15.2: a proxy forwards them); 100 Continue is the server's to send.
            if not head.startswith((b"HTTP/1.1 100 ", b"HTTP/1.0 100 ")):
                if transport is not None and not transport.is_closing():
                    transport.write(head)

    try:
        resp = await upstream.pool.send(
            request.method,
            target,
            headers,
            body,
            limit=upstream.serve_timeout,
            idle=True,
            host=upstream.host(request.headers.get("Host")),
            interim=interim,
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        capture.latency = _perf() - start
        capture.error = kind = error_kind(exc)
        exc.__traceback__ = None  # its frames hold the request: no cycle left behind
        logger.debug("%s %s failed: %s: %r", upstream.role, request.method, kind, exc)
        return error_response(kind, upstream.role, trace_id)
    try:
        capture.upstream_head = _perf() - resp.sent_at
        capture.head(resp.status, resp.head_block)
        if resp.status == 101:
            capture.latency = _perf() - start
            return await switch(request, resp, upstream.role, trace_id, capture)
        # What of the body is here already goes out with the head, in one write; when
        # nothing is, the head goes out at once (a slow stream still shows its head).
        try:
            first = resp.read_nowait()
        except UpstreamError as exc:  # broken before the head went out: 502
            capture.latency = _perf() - start
            capture.error = kind = exc.kind
            capture.truncated = True
            return error_response(kind, upstream.role, trace_id)
        redirect = None
        client_host = request.headers.get("Host")
        if (
            client_host
            and b"location" in resp.head_block.lower()  # (then exactly, on the fields)
            and ("Location" in resp.headers or "Content-Location" in resp.headers)
        ):
            # (not request.host: without a Host header it asks the resolver for our name)
            redirect = (upstream.origin, f"{request.scheme}://{client_host}")
        immediate = not (first or resp.at_eof)
        fields = None if redirect is not None else client_fields(resp.head_parts, trace_id)
        if fields is not None:
            out = ClientAnswer.from_fields(
                resp.status, resp.reason, fields[0], fields[1], immediate=immediate
            )
        else:
            out = ClientAnswer(
                resp.status,
                resp.reason,
                client_headers(resp.headers, trace_id, redirect),
                immediate=immediate,
            )
        try:
            await out.prepare(request)
            if first:
                capture.add(first)
                await out.write(first)
        except ConnectionError as exc:
            _client_gone(capture, exc)
            capture.truncated = bool(first)
            return out
        capture.head_sent = _perf()
        while True:
            try:
                chunk = await resp.read()
            except UpstreamError as exc:
                # The head was sent: no 502 now. Close the client's connection, so that the
                # body it got cannot pass for a whole one.
                capture.latency = _perf() - start
                capture.error = exc.kind
                exc.__traceback__ = None
                capture.truncated = True
                transport = request.transport
                if transport is not None:
                    transport.close()
                return out
            if not chunk:
                break
            capture.add(chunk)
            try:
                await out.write(chunk)
            except ConnectionError as exc:
                _client_gone(capture, exc)
                capture.truncated = True
                capture.latency = _perf() - start
                return out
        # Timed in the connection's callbacks, as a mirror is (never the client's writes).
        latency = resp.latency
        capture.latency = _perf() - start if latency is None else latency
        try:
            trailers = resp.trailers
            if trailers and out.chunked_out and accepts_trailers(request):
                await out.write_trailers(trailers)
            else:
                await out.write_eof()  # trailers are dropped for a client that did not ask
        except ConnectionError as exc:
            _client_gone(capture, exc)
        if request.transport is None:  # gone while the last bytes were on their way
            capture.client_gone = True
        return out
    finally:
        resp.release()


def outruns(capture: Capture, limit: int) -> bool:
    """The answer's ``Content-Length`` says more than ``limit`` bytes are left after those
    ``capture`` has seen: reading on could not time it."""
    headers = capture.headers
    length = None if headers is None else headers.get("Content-Length")
    if length is None or not length.isdigit():
        return False
    return int(length) - capture.total > limit


async def fetch(
    upstream: Upstream,
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes | None,
    capture: Capture,
    client_host: str | None = None,
    *,
    read_on: bool = True,
    fresh: bool = False,
) -> Capture:
    """Send a mirror to ``upstream`` and read its answer within the mirror timeout, up to
    what is recorded (``capture``'s bound): past it the answer is recorded truncated, and
    the rest is read without being kept (``UpstreamAnswer.discard``), only to time its
    end; past the pool's ``max_discard_bytes`` more the connection is closed and the
    answer has no latency (its end is unknown). A mirror thus reads at most the record
    bound (times ``proxy.capture.ENCODED_FACTOR`` for a compressed body) plus that, plus
    the pool's read buffer. The rest is not read on (the connection closed at once, the
    answer untimed unless it had ended already) when ``read_on`` is False, or when its
    ``Content-Length`` says it outruns that bound. Never raises for an upstream failure:
    ``capture.error`` says it. ``fresh``: on a new connection (``Pool.send``)."""
    start = _perf()
    cut = False
    resp: UpstreamAnswer | None = None
    try:
        resp = await upstream.pool.send(
            method,
            target,
            headers,
            body,
            limit=upstream.mirror_timeout,
            idle=False,
            host=upstream.host(client_host),
            fresh=fresh,
        )
        try:
            capture.head(resp.status, resp.head_block)
            while chunk := await resp.read():
                capture.add(chunk)
                if capture.truncated:  # past what is recorded: read on, not kept, to time it
                    limit = upstream.pool.max_discard_bytes
                    if not read_on or outruns(capture, limit):
                        limit = 0  # its end cannot be timed: read no more
                    cut = not await resp.discard(limit)
                    break
        finally:
            resp.release()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        capture.error = error_kind(exc)
        exc.__traceback__ = None  # its frames hold the capture: no cycle left behind
        if capture.status is not None:  # the head came, the body broke off
            capture.truncated = True
    if not cut:
        latency = None if resp is None or capture.error else resp.latency
        capture.latency = _perf() - start if latency is None else latency
    return capture
