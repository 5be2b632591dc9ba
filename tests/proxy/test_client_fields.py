"""The client's answer head from the upstream's fields as bytes (``client_fields``) is the
one ``client_headers`` gives, put on the wire; or it declines and ``client_headers`` runs."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.headers import client_fields, client_headers

TRACE = "0af7651916cd43dd8448eb211c80319c"

CASES: list[list[tuple[bytes, bytes]]] = [
    [],
    [(b"Content-Length", b"2")],
    [
        (b"Server", b"nginx/1.22.1"),
        (b"Content-Type", b"application/json"),
        (b"Content-Length", b"1467"),
        (b"Connection", b"keep-alive"),
        (b"Keep-Alive", b"timeout=5"),
        (b"ETag", b'"abc"'),
    ],
    [(b"transfer-encoding", b"chunked"), (b"TRAILER", b"x"), (b"X-Trace-ID", b"theirs")],
    [(b"Set-Cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"X-Bytes", b"caf\xe9 \xff")],
    [(b"Content-Length", b"12"), (b"content-length", b"nope")],
    [(b"Connection", b"Keep-Alive, TE"), (b"Te", b"x"), (b"A", b"")],
]

DECLINED: list[list[tuple[bytes, bytes]]] = [
    [(b"Connection", b"close"), (b"Close", b"x")],  # names a field: client_headers drops it
    [(b"Connection", b"keep-alive, X-Hop"), (b"X-Hop", b"1")],
    [("\u212aeep-Alive".encode(), b"x")],  # a name str.lower() maps to an ASCII one
]


def _str_pairs(fields: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [
        (k.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
        for k, v in fields
    ]


def _declared(pairs: list[tuple[str, str]]) -> int | None:
    declared = None
    for k, v in pairs:
        if k.lower() == "content-length":
            try:
                declared = int(v)
            except ValueError:
                declared = None
    return declared


@pytest.mark.parametrize("fields", CASES)
def test_the_same_fields_as_client_headers(fields: list[tuple[bytes, bytes]]) -> None:
    parts = [part for field in fields for part in field]
    got = client_fields(parts, TRACE)
    assert got is not None
    pairs = client_headers(CIMultiDictProxy(CIMultiDict(_str_pairs(fields))), TRACE)
    wire = "".join(f"{k}: {v}\r\n" for k, v in pairs).encode("utf-8", "surrogateescape")
    assert got == (wire, _declared(pairs))


@pytest.mark.parametrize("fields", DECLINED)
def test_declines_what_only_client_headers_reads_right(
    fields: list[tuple[bytes, bytes]],
) -> None:
    assert client_fields([part for field in fields for part in field], TRACE) is None
