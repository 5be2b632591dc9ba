"""How failures on the request path are named and answered.

An upstream failure is recorded as an ``ErrorKind`` (:func:`error_kind`) and, when it
happens before the answer's head went out, answered to the client as a JSON 502 (refused,
reset, DNS, error) or 504 (timeout) (:func:`error_response`): this module is the one place
that mapping lives. A client that takes no bytes of its answer in time is cut off with
:class:`ClientStalled`.
"""

from __future__ import annotations

from typing import Final

import orjson

from graygate.errors import UpstreamError
from graygate.vocabulary import ErrorKind
from proxy.client_answer import Answer
from proxy.tagging import X_TRACE_ID

__all__ = ["ClientStalled", "error_kind", "error_response"]


def error_kind(exc: BaseException) -> str:
    """What an upstream failure is recorded as: timeout | refused | reset | error."""
    if isinstance(exc, UpstreamError):  # what proxy.upstream raises: its kind
        return exc.kind
    if isinstance(exc, TimeoutError):
        return ErrorKind.TIMEOUT
    if isinstance(exc, ConnectionError):  # e.g. the client's streamed body broke off
        return ErrorKind.RESET
    return ErrorKind.ERROR


_ERROR_STATUS: Final[dict[str, int]] = {ErrorKind.TIMEOUT: 504}


def error_response(kind: str, role: str, trace_id: str) -> Answer:
    """The client's answer when the serving upstream failed: 504 on timeout, else 502."""
    return Answer(
        _ERROR_STATUS.get(kind, 502),
        headers=[(X_TRACE_ID, trace_id)],
        body=orjson.dumps({"error": kind, "upstream": role, "trace_id": trace_id}),
        content_type="application/json",
    )


class ClientStalled(ConnectionResetError):
    """The client took no bytes of its answer for ``timeouts.client_write_s``: its
    connection was cut off (and the upstream's is released)."""
