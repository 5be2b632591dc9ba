"""Where an HTTP head ends (``proxy.http_head``): found at the bound, not one byte past it,
and nothing past the bound looked at."""

from __future__ import annotations

import pytest

from proxy.http_head import head_end


@pytest.mark.parametrize(
    ("head", "stop", "end"),
    [
        (b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody", 25, 25),  # ends at the bound: found
        (b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody", 24, -1),  # one byte past it: not
        (b"HTTP/1.1 200 OK\nA: b\n\nbody", 22, 22),  # bare LF empty line, at the bound
        (b"HTTP/1.1 200 OK\nA: b\n\nbody", 21, -1),
        (b"HTTP/1.1 200 OK\r\n" + b"X: " + b"x" * 100_000 + b"\r\n\r\n", 4096, -1),
    ],
)
def test_head_end_looks_no_further_than_the_bound(head: bytes, stop: int, end: int) -> None:
    """An endless head costs a scan of the bound, whatever arrived past it in one read."""
    assert head_end(head, 0, stop) == end


def test_head_end_resumes_where_the_last_search_stopped() -> None:
    """Collected in pieces: an empty line split across two reads is still found."""
    first = b"HTTP/1.1 200 OK\r\nA: b\r\n\r"
    assert head_end(first, 0, 1000) == -1
    whole = first + b"\nbody"
    assert head_end(whole, max(0, len(first) - 2), 1000) == len(first) + 1
