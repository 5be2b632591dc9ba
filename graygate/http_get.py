"""One bounded HTTP GET for the shell's probes: preflight and the runtime sampler.

:func:`http_get` reads at most ``limit`` bytes of the body (and says whether there was more),
follows no redirect, and turns every way of getting no answer into :class:`NoAnswer` with a
one-line reason (``refused: ...``, ``no answer within 2s``, ``ClientPayloadError: ...``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import aiohttp

__all__ = ["Fetched", "NoAnswer", "http_get"]


class NoAnswer(Exception):
    """The GET got no answer; the message is one short line without the URL."""


@dataclass(frozen=True, slots=True)
class Fetched:
    """What a GET answered: the status, the body's first ``limit`` bytes, whether the body
    was longer, and how long it took in milliseconds."""

    status: int
    body: bytes
    truncated: bool
    elapsed_ms: float


async def http_get(
    session: aiohttp.ClientSession,
    url: str,
    client_timeout: aiohttp.ClientTimeout,
    *,
    limit: int,
) -> Fetched:
    """GET ``url`` within ``client_timeout``, reading at most ``limit`` bytes of the body.

    Raises :class:`NoAnswer` when there is no answer (timeout, refused, broken connection).
    """
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    started = time.perf_counter()
    try:
        async with session.get(url, timeout=client_timeout, allow_redirects=False) as resp:
            body = await resp.content.read(limit + 1)
            elapsed_ms = (time.perf_counter() - started) * 1000
            return Fetched(resp.status, body[:limit], len(body) > limit, elapsed_ms)
    except TimeoutError:
        raise NoAnswer(f"no answer within {client_timeout.total:g}s") from None
    except aiohttp.ClientConnectorError as exc:
        raise NoAnswer(f"refused: {exc.os_error or exc}") from None
    except aiohttp.ClientError as exc:
        raise NoAnswer(f"{type(exc).__name__}: {exc}") from None
