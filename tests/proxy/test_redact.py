"""Redaction before storage. Pure."""

from __future__ import annotations

import orjson
import pytest

from config.schema import RedactConfig
from proxy.redact import Redactor


def redactor(**cfg: object) -> Redactor:
    return Redactor(RedactConfig.model_validate(cfg))


def test_default_and_configured_headers() -> None:
    r = redactor(headers=["X-Session"], placeholder="***")
    out = r.headers(
        [
            ("Authorization", "Bearer t"),
            ("Proxy-Authorization", "Basic x"),
            ("Cookie", "sid=1"),
            ("Set-Cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("X-API-Key", "k"),
            ("x-session", "s"),
            ("Accept", "a/b"),
            ("X-Multi", "1"),
            ("X-Multi", "2"),
        ]
    )
    assert out == {
        "authorization": "***",
        "proxy-authorization": "***",
        "cookie": "***",
        "set-cookie": "***, ***",
        "x-api-key": "***",
        "x-session": "***",
        "accept": "a/b",
        "x-multi": "1, 2",
    }


DOC = {
    "user": {"name": "ann", "password": "p1", "card": {"number": "4111", "cvv": 123}},
    "items": [{"sku": "a", "token": "t1"}, {"sku": "b", "token": "t2"}],
    "nested": {"deep": [{"password": "p2"}, {"other": {"password": None}}]},
    "meta": {"a": 1, "b": {"c": 2}},
    "keep": "visible",
}


@pytest.mark.parametrize(
    ("path", "check"),
    [
        ("$.user.password", lambda d: d["user"]["password"] == "[REDACTED]"),
        ("$.user.card", lambda d: d["user"]["card"] == "[REDACTED]"),
        (
            "$..password",
            lambda d: (
                d["user"]["password"] == "[REDACTED]"
                and d["nested"]["deep"][0]["password"] == "[REDACTED]"
                and d["nested"]["deep"][1]["other"]["password"] == "[REDACTED]"
            ),
        ),
        ("$.items[*].token", lambda d: [i["token"] for i in d["items"]] == ["[REDACTED]"] * 2),
        ("$.items[1].token", lambda d: [i["token"] for i in d["items"]] == ["t1", "[REDACTED]"]),
        ("$.meta.*", lambda d: d["meta"] == {"a": "[REDACTED]", "b": "[REDACTED]"}),
        ("$.user.card.cvv", lambda d: d["user"]["card"] == {"number": "4111", "cvv": "[REDACTED]"}),
    ],
)
def test_json_paths(path: str, check: object) -> None:
    out = redactor(json_fields=[path]).body(orjson.dumps(DOC), "application/json")
    assert out is not None
    doc = orjson.loads(out)
    assert check(doc)  # type: ignore[operator]
    assert doc["keep"] == "visible"
    assert doc["items"][0]["sku"] == "a"


def test_no_match_keeps_the_exact_bytes() -> None:
    body = b'{ "a" :  1,\n "b": [1, 2] }'
    assert redactor(json_fields=["$.zzz"]).body(body, "application/json") is body


def test_non_json_bodies_are_left_alone() -> None:
    r = redactor(json_fields=["$..password"])
    text = b"password=hunter2"
    assert r.body(text, "application/x-www-form-urlencoded") == text
    assert r.body(text, None) == text
    assert r.body(b"<p>password</p>", "text/html") == b"<p>password</p>"
    assert r.body(None, "application/json") is None
    assert r.body(b"", "application/json") == b""


def test_json_sniffed_without_content_type_and_vendor_types() -> None:
    r = redactor(json_fields=["$.secret"])
    out = r.body(b'{"secret": "x", "ok": 1}', None)
    assert orjson.loads(out or b"") == {"secret": "[REDACTED]", "ok": 1}
    out = r.body(b'{"secret": "x"}', "application/vnd.api+json; charset=utf-8")
    assert orjson.loads(out or b"") == {"secret": "[REDACTED]"}


def test_cut_json_is_still_redacted_by_field_name() -> None:
    r = redactor(json_fields=["$.user.password", "$..token"])
    cut = b'{"user": {"password": "hunter2", "name": "a"}, "token": "abcdef'
    out = r.body(cut, "application/json")
    assert out is not None
    assert b"hunter2" not in out and b"abcdef" not in out
    assert b'"name": "a"' in out


def test_no_fields_configured_is_a_no_op() -> None:
    body = b'{"password": "x"}'
    assert redactor().body(body, "application/json") is body


def test_root_path_redacts_the_whole_body() -> None:
    out = redactor(json_fields=["$"]).body(b'{"a": 1}', "application/json")
    assert out == b'"[REDACTED]"'
