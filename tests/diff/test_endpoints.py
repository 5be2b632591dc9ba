"""Endpoint naming: configured patterns first, else id-like segments become {id}."""

from __future__ import annotations

import pickle

import pytest

from diff.endpoints import EndpointMatcher, is_id_segment, normalise_path, normalise_pattern


@pytest.mark.parametrize(
    "segment",
    [
        "1042",
        "-7",
        "3.14",
        "10.0.0.1",
        "3f2b8c4e-6a1d-4c7e-9b2a-1d2e3f4a5b6c",
        "3F2B8C4E-6A1D-4C7E-9B2A-1D2E3F4A5B6C",
        "5f2b9c1e",
        "507f1f77bcf86cd799439011",  # a Mongo ObjectId
        "da39a3ee5e6b4b0d3255bfef95601890afd80709",  # a sha1
        "ORD-1001",
        "user_42",
        "ord10012",
        "dXNlcjoxMjM0NTY3OA",  # base64url
        "a8Fk2sLqZpXwBnRt",  # mixed case, one digit
        "tok_9fJ3kd82LmQx01zA",
    ],
)
def test_id_like_segments(segment: str) -> None:
    assert is_id_segment(segment)


@pytest.mark.parametrize(
    "segment",
    [
        "api",
        "orders",
        "v2",
        "v10",
        "sha256",
        "deadbeef",
        "health",
        "checkout-summary",
        "orders-export-v2-summary",
        "items",
        "page-1",
        "me",
    ],
)
def test_route_words_stay(segment: str) -> None:
    assert not is_id_segment(segment)


def test_normalised_paths_never_give_a_row_per_id() -> None:
    m = EndpointMatcher()
    seen = {
        m.endpoint("GET", f"/api/orders/{n}/items/{sku}")
        for n, sku in [(1, "5f2b9c1e"), (1042, "507f1f77bcf86cd799439011"), (77, "0a0b0c0d1")]
    }
    assert seen == {"GET /api/orders/{id}/items/{id}"}
    assert m.endpoint("get", "/api/users/3f2b8c4e-6a1d-4c7e-9b2a-1d2e3f4a5b6c/profile") == (
        "GET /api/users/{id}/profile"
    )
    assert m.endpoint("GET", "/api/orders/1042?expand=items") == "GET /api/orders/{id}"
    assert m.endpoint("GET", "/api/orders/1042/") == "GET /api/orders/{id}"
    assert m.endpoint("GET", "/") == "GET /"
    assert normalise_path("//api//v2/orders/ORD-2024") == "/api/v2/orders/{id}"


def test_configured_patterns_win_in_order() -> None:
    m = EndpointMatcher(
        [
            "GET /api/orders/{order}/items/{sku}",
            "GET /api/orders/{id}",
            "* /api/orders/{id}",
            "GET /api/orders/{id}",  # never reached
            "GET /api/catalog/{slug}",
        ]
    )
    assert m.endpoint("GET", "/api/orders/1042") == "GET /api/orders/{id}"
    assert m.endpoint("GET", "/api/orders/1042/items/SKU-1") == (
        "GET /api/orders/{order}/items/{sku}"
    )
    # "*": any method, reported with the request's method.
    assert m.endpoint("DELETE", "/api/orders/1042") == "DELETE /api/orders/{id}"
    assert m.match("DELETE", "/api/orders/1042") == "* /api/orders/{id}"
    # A pattern wins even over what normalisation would keep: "summer-sale" is a word.
    assert m.endpoint("GET", "/api/catalog/summer-sale") == "GET /api/catalog/{slug}"
    # {param} is exactly one segment.
    assert m.endpoint("GET", "/api/catalog/a/b") == "GET /api/catalog/a/b"
    assert m.endpoint("POST", "/api/payments/991") == "POST /api/payments/{id}"


def test_bad_patterns() -> None:
    with pytest.raises(ValueError, match="whole"):
        EndpointMatcher(["GET /api/orders/id-{id}"])
    with pytest.raises(ValueError, match="METHOD"):
        EndpointMatcher(["/api/orders"])
    assert normalise_pattern("get /api//orders/{id}/") == "GET /api/orders/{id}"


def test_cached_answers_are_stable_and_the_matcher_pickles() -> None:
    m = EndpointMatcher(["GET /api/orders/{id}"])
    first = [m.endpoint("GET", f"/api/orders/{i}") for i in range(50)]
    again = [m.endpoint("GET", f"/api/orders/{i}") for i in range(50)]
    assert first == again == ["GET /api/orders/{id}"] * 50
    copy = pickle.loads(pickle.dumps(m))
    assert copy.endpoint("GET", "/api/orders/7") == "GET /api/orders/{id}"
