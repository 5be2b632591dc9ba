"""Header policy of the request path: which header fields cross the hop each way, what
the proxy adds, and the request target sent upstream.

- Hop-by-hop headers (RFC 9110 7.6.1, and every header the ``Connection`` header names)
  are dropped both ways (a websocket upgrade the client asked for aside: tunnelled,
  :func:`asks_upgrade`); ``X-Forwarded-For`` is appended to, ``X-Forwarded-Proto`` and
  ``X-Forwarded-Host`` set (:func:`upstream_headers`), believed from trusted proxies only
  (``proxy.trust``).
- No header is added upstream that the client did not send but the proxy's own
  (``X-Forwarded-*``, trace, gray label); ``Host`` is the pool's to set
  (``proxy.upstream_pools.Upstream.host``).
- Toward the client (:func:`client_headers`): the upstream's fields in order, hop-by-hop
  dropped, ``X-Trace-ID`` set; a ``Location`` naming the serving upstream is rewritten to
  the proxied address. Trailers only to a client that sent ``TE: trailers``
  (:func:`accepts_trailers`).
- The request target is the request's raw path and query only (:func:`split_target`): an
  absolute-form target gives its path only, ``//host`` stays a path on the configured
  upstream, and with a base path a target whose dot-segments would leave it is refused
  (:func:`leaves_root`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from ipaddress import IPv4Network, IPv6Network
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote

from proxy.tagging import TRACEPARENT, X_TRACE_ID, Tags
from proxy.trust import is_proxy_header, peer_is_trusted

if TYPE_CHECKING:
    from proxy.server import Request

__all__ = [
    "HOP_BY_HOP",
    "X_GRAY_SHADOW",
    "accepts_trailers",
    "asks_upgrade",
    "client_fields",
    "client_headers",
    "leaves_root",
    "request_drop",
    "split_target",
    "switching_headers",
    "upstream_headers",
]

X_GRAY_SHADOW: Final = "X-Gray-Shadow"

HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Request headers the proxy drops or sets itself. An incoming X-Gray-Shadow is dropped: a
# client must not be able to have the primary treat its real request as shadow traffic.
_REQUEST_DROP: Final = HOP_BY_HOP | {
    "host",
    "content-length",
    "expect",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "traceparent",
    "x-trace-id",
    "x-gray-shadow",
}
_RESPONSE_DROP: Final = HOP_BY_HOP | {"x-trace-id"}
_SWITCH_DROP: Final = _RESPONSE_DROP - {"connection", "upgrade"}  # a 101 keeps the switch


def _connection_named(value: str | None, base: frozenset[str]) -> frozenset[str]:
    if not value:
        return base
    return base | {token.strip().lower() for token in value.split(",")}


def split_target(request: Request) -> tuple[str, str]:
    """The request's raw path and raw query string, exactly as the client sent them.

    An absolute-form target (``GET http://host/x``) gives its path and query only: the
    authority never picks the upstream.
    """
    raw = request.raw_path
    if raw == "*" and request.method == "OPTIONS":
        return "*", ""  # the asterisk form: the server as a whole
    if raw.startswith("/"):
        if "#" in raw:
            raw = raw.partition("#")[0]
        path, _, query = raw.partition("?")
        return path, query
    url = request.rel_url
    return url.raw_path or "/", url.raw_query_string


def leaves_root(path: str) -> bool:
    """Whether ``path``'s dot-segments would take it above the root, as any server along
    the way might read it: percent-decoded (twice: ``%252e``), ``\\`` as ``/``, and
    ``;params`` cut from a segment (``..;/``)."""
    view = path
    for _ in range(3):
        if "%" not in view:
            break
        view = unquote(view, errors="surrogateescape")
    if "." not in view:
        return False
    depth = 0
    for segment in view.replace("\\", "/").split("/"):
        segment = segment.partition(";")[0]
        if segment == "..":
            depth -= 1
            if depth < 0:
                return True
        elif segment not in ("", "."):
            depth += 1
    return False


def request_drop(gray_header: str) -> frozenset[str]:
    """The request headers :func:`upstream_headers` drops (it sets the gray header itself)."""
    return _REQUEST_DROP | {gray_header.lower()}


def upstream_headers(
    request: Request,
    tags: Tags,
    gray_header: str,
    label: str,
    drop: frozenset[str] = _REQUEST_DROP,
    *,
    trusted: Sequence[IPv4Network | IPv6Network] = (),
) -> list[tuple[str, str]]:
    """The headers sent upstream: the client's minus hop-by-hop (and ``drop``), plus the
    proxy's own: the gray label, ``X-Forwarded-*``, ``X-Trace-ID``, ``traceparent``.

    ``Host`` is left out: the pool sets it to its upstream's.

    Client-address and original-URL headers (``Forwarded``, every ``X-Forwarded-*``,
    ``X-Real-IP``, ``X-Client-IP``, ``True-Client-IP``, ``X-Original-URL``,
    ``X-Rewrite-URL``, ...: ``proxy.trust``) are believed only from a peer in ``trusted``
    (the ``trusted_proxies`` config): from it they pass, ``X-Forwarded-For`` is appended to
    and its ``X-Forwarded-Proto``/``-Host`` are kept. From any other peer they are dropped,
    ``X-Forwarded-For`` restarts at the peer's address, and ``X-Forwarded-Proto`` and
    ``X-Forwarded-Host`` are the proxy's own.
    """
    headers = request.headers
    remote = request.remote or "unknown"
    believed = peer_is_trusted(request.remote, trusted)
    drop = _connection_named(headers.get("Connection"), drop)
    if believed:
        out = [(k, v) for k, v in headers.items() if k.lower() not in drop]
    else:
        out = [
            (k, v)
            for k, v in headers.items()
            if (low := k.lower()) not in drop and not is_proxy_header(low)
        ]
    upgrade = asks_upgrade(request)
    if upgrade is not None:  # hop-by-hop, but the client asked for it to reach the origin
        out.append(("Connection", "Upgrade"))
        out.append(("Upgrade", upgrade))
    out.append((gray_header, label))
    xff = headers.getall("X-Forwarded-For", None) if believed else None
    out.append(("X-Forwarded-For", f"{', '.join(xff)}, {remote}" if xff else remote))
    proto = headers.get("X-Forwarded-Proto") if believed else None
    out.append(("X-Forwarded-Proto", proto or request.scheme))
    host = (headers.get("X-Forwarded-Host") if believed else None) or headers.get("Host")
    if host is not None:
        out.append(("X-Forwarded-Host", host))
    out.append((X_TRACE_ID, tags.trace_id))
    out.append((TRACEPARENT, tags.traceparent))
    return out


def client_headers(
    upstream: Mapping[str, str],
    trace_id: str,
    redirect: tuple[str, str] | None = None,
) -> list[tuple[str, str]]:
    """The upstream's response headers for the client, in order: hop-by-hop dropped,
    X-Trace-ID set. ``redirect``: (upstream origin, proxied origin): a ``Location`` that
    names the upstream's own address is rewritten to the proxied address (as nginx's
    ``proxy_redirect default``), so that the client comes back through graygate."""
    drop = _connection_named(upstream.get("Connection"), _RESPONSE_DROP)
    out = [(k, v) for k, v in upstream.items() if k.lower() not in drop]
    if redirect is not None:
        origin, proxied = redirect
        for i, (k, v) in enumerate(out):
            if k.lower() in ("location", "content-location") and _names_origin(v, origin):
                out[i] = (k, proxied + v[len(origin) :])
    out.append((X_TRACE_ID, trace_id))
    return out


_RESPONSE_DROP_BYTES: Final = frozenset(name.encode() for name in _RESPONSE_DROP)


def client_fields(parts: list[bytes], trace_id: str) -> tuple[bytes, int | None] | None:
    """:func:`client_headers` on the upstream's fields as bytes (``parts``: names and values
    in turn, as they came), put on the wire (``name: value`` lines), and the
    ``Content-Length`` they declare (None: none, or not a number). None when a
    ``Connection`` field names fields to drop besides the hop-by-hop ones: then
    ``client_headers``. No redirect is rewritten here."""
    out: list[bytes] = []
    declared: int | None = None
    for i in range(0, len(parts), 2):
        name = parts[i]
        if not name.isascii():
            return None  # (str.lower() maps a few non-ASCII letters to ASCII ones)
        low = name.lower()
        if low in _RESPONSE_DROP_BYTES:
            if low == b"connection" and any(
                token.strip().lower() not in _RESPONSE_DROP_BYTES
                for token in parts[i + 1].split(b",")
            ):
                return None
            continue
        value = parts[i + 1]
        if low == b"content-length":
            if not value.isascii():
                return None  # (int() reads other digits in a str)
            try:
                declared = int(value)
            except ValueError:
                declared = None
        out += (name, b": ", value, b"\r\n")
    out += (b"X-Trace-ID: ", trace_id.encode(), b"\r\n")
    return b"".join(out), declared


def _names_origin(value: str, origin: str) -> bool:
    """``value`` is a URL at ``origin`` (scheme and authority, compared case-insensitively)."""
    n = len(origin)
    return (
        len(value) >= n and value[:n].lower() == origin and (len(value) == n or value[n] in "/?#")
    )


def asks_upgrade(request: Request) -> str | None:
    """The protocol the client asks to switch to (``Upgrade`` named in ``Connection``).

    Only ``websocket``: a request asking for another one is forwarded as a plain request
    (and its connection closed after the answer: ``proxy.server``)."""
    upgrade = request.headers.get("Upgrade")
    connection = request.headers.get("Connection")
    if not upgrade or not connection or upgrade.strip().lower() != "websocket":
        return None
    if "upgrade" not in {t.strip().lower() for t in connection.split(",")}:
        return None
    return upgrade


def accepts_trailers(request: Request) -> bool:
    """The client said it accepts trailer fields (``TE: trailers``)."""
    te = request.headers.get("TE")
    return te is not None and any(
        t.split(";", 1)[0].strip().lower() == "trailers" for t in te.split(",")
    )


def switching_headers(upstream: Mapping[str, str], trace_id: str) -> list[tuple[str, str]]:
    """A 101 answer's header fields for the client: hop-by-hop dropped but ``Connection``
    and ``Upgrade`` (the switch itself), ``X-Trace-ID`` set."""
    out = [(k, v) for k, v in upstream.items() if k.lower() not in _SWITCH_DROP]
    out.append((X_TRACE_ID, trace_id))
    return out
