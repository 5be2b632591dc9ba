"""Trusted proxies: whose client-address and original-URL headers are believed.

A client can send ``Forwarded``, ``X-Forwarded-For``, ``X-Real-IP``, ``X-Original-URL``...
itself. They are believed (passed upstream, ``X-Forwarded-For`` appended to) only when the
peer that connected to graygate is in ``trusted_proxies`` (a list of CIDRs); from any other
peer ``proxy.headers.upstream_headers`` drops them and starts ``X-Forwarded-For`` afresh.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Final

__all__ = ["PROXY_HEADERS", "is_proxy_header", "peer_is_trusted"]

logger = logging.getLogger(__name__)

# Headers that claim the client's address or the original URL (lower case). Every
# ``X-Forwarded-*`` header is treated the same (``is_proxy_header``).
PROXY_HEADERS: Final = frozenset(
    {
        "forwarded",
        "x-real-ip",
        "x-client-ip",
        "true-client-ip",
        "x-cluster-client-ip",
        "client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "x-original-forwarded-for",
        "x-original-url",
        "x-rewrite-url",
        "x-original-host",
        "x-host",
    }
)


def is_proxy_header(lower_name: str) -> bool:
    """Whether a (lower-case) header name is one only a trusted proxy may set."""
    return lower_name in PROXY_HEADERS or lower_name.startswith("x-forwarded-")


def peer_is_trusted(remote: str | None, trusted: Sequence[IPv4Network | IPv6Network]) -> bool:
    """Whether the peer address ``remote`` (as aiohttp's ``request.remote``) is in one of
    the ``trusted`` networks. An IPv4-mapped IPv6 address counts as its IPv4 address; a
    zone id (``fe80::1%eth0``) is ignored; no address, or not an IP: not trusted."""
    if not trusted or not remote:
        return False
    try:
        addr = ip_address(remote.partition("%")[0])
    except ValueError:
        return False
    if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in trusted)
