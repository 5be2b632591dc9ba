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


def test_other_bodies_are_left_alone() -> None:
    r = redactor(json_fields=["$..password"])
    assert r.body(b"<p>password</p>", "text/html") == b"<p>password</p>"
    text = b"password is hunter2"
    assert r.body(text, "text/plain") is text
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


# --- issue 10 item 11: the same field rules everywhere a named value is stored ---------


def test_json_body_whatever_its_declared_type() -> None:
    r = redactor(json_fields=["$..password"])
    for ctype in ("text/plain", "application/octet-stream", "text/html", None):
        out = r.body(b'  {"user": {"password": "hunter2"}, "ok": 1}', ctype)
        assert out is not None and b"hunter2" not in out, ctype
        assert orjson.loads(out) == {"user": {"password": "[REDACTED]"}, "ok": 1}
    cut = r.body(b'{"password": "hunter2", "more": "abc', "text/plain")
    assert cut is not None and b"hunter2" not in cut


@pytest.mark.parametrize("ctype", ["application/x-www-form-urlencoded", "text/plain", None])
def test_form_body_fields(ctype: str | None) -> None:
    r = redactor(json_fields=["$..password", "$.card.number", "$.items[*].sku"])
    body = (
        b"user=ann&password=hunter2&card%5Bnumber%5D=4111&card.cvv=1"
        b"&items[0][sku]=s1&items[1][sku]=s2&note=a+b"
    )
    out = r.body(body, ctype)
    assert out is not None
    for secret in (b"hunter2", b"4111", b"s1", b"s2"):
        assert secret not in out, (ctype, secret)
    assert out.startswith(b"user=ann&password=%5BREDACTED%5D&card%5Bnumber%5D=%5BREDACTED%5D")
    assert b"card.cvv=1" in out and out.endswith(b"&note=a+b")  # the rest byte for byte


def test_form_fields_named_like_secrets_always_go() -> None:
    r = redactor()  # nothing configured
    out = r.body(b"grant_type=password&client_secret=cs1&refresh_token=rt1&code=ok", None)
    assert out == (
        b"grant_type=password&client_secret=%5BREDACTED%5D&refresh_token=%5BREDACTED%5D&code=ok"
    )
    assert r.body(b"a=1&b=2", "application/x-www-form-urlencoded") == b"a=1&b=2"


def test_query_parameters() -> None:
    r = redactor(json_fields=["$.card"], placeholder="***")
    assert r.query("") == ""
    assert r.query("q=shoes&page=2") == "q=shoes&page=2"
    assert r.query("q=1&access_token=abc&card=4111&X-Amz-Signature=sig&flag") == (
        "q=1&access_token=%2A%2A%2A&card=%2A%2A%2A&X-Amz-Signature=%2A%2A%2A&flag"
    )
    assert r.query("access%5Ftoken=abc") == "access%5Ftoken=%2A%2A%2A"  # encoded name


def test_multipart_fields() -> None:
    r = redactor(json_fields=["$..password"])
    boundary = "XyZ"
    body = (
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="user"\r\n\r\n'
        b"ann\r\n"
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="password"\r\n\r\n'
        b"hunter2\r\n"
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="api_token"\r\n\r\n'
        b"tok9\r\n"
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="meta"; filename="m.json"\r\n'
        b"Content-Type: application/json\r\n\r\n"
        b'{"password": "pw3", "x": 1}\r\n'
        b"--XyZ--\r\n"
    )
    out = r.body(body, f'multipart/form-data; boundary="{boundary}"')
    assert out is not None
    for secret in (b"hunter2", b"tok9", b"pw3"):
        assert secret not in out
    assert b"\r\n\r\nann\r\n--XyZ" in out
    assert b'name="password"\r\n\r\n[REDACTED]\r\n--XyZ' in out
    assert out.endswith(b"--XyZ--\r\n")
    # cut at the storage bound inside a secret part: still redacted
    cut = r.body(body[: body.index(b"hunter2") + 4], "multipart/form-data; boundary=XyZ")
    assert cut is not None and b"hunt" not in cut


def test_headers_named_like_secrets_and_bounded() -> None:
    r = redactor(max_header_bytes=1024)
    out = r.headers([("X-Auth-Token", "t"), ("X-Amz-Security-Token", "s"), ("Accept", "a")])
    assert out == {
        "x-auth-token": "[REDACTED]",
        "x-amz-security-token": "[REDACTED]",
        "accept": "a",
    }
    big = r.headers([("X-Big", "v" * 10_000)])
    assert big == {"x-graygate-headers-dropped": "1"}  # did not fit: left out, counted
    many = r.headers([(f"X-H{i}", "v" * 50) for i in range(100)])
    assert sum(len(k) + len(v) for k, v in many.items()) <= 1024 + 40
    assert int(many["x-graygate-headers-dropped"]) > 0
    wide = redactor().headers([("X-Wide", "w" * 20_000)])
    assert len(wide["x-wide"]) == 8192 and wide["x-wide"].endswith("...[cut]")


def test_header_budget_at_the_bound() -> None:
    # exactly max_header_bytes (name + value) fits; one byte more does not
    r = redactor(max_header_bytes=1024)
    fits = r.headers([("x-a", "v" * (1024 - 3))])
    assert fits == {"x-a": "v" * 1021}
    over = r.headers([("x-a", "v" * (1024 - 2))])
    assert over == {"x-graygate-headers-dropped": "1"}


def test_header_names_remembered_up_to_the_bound_and_redacted_in_any_case() -> None:
    """The lower case and secrecy of header names are kept for the next exchange, at most
    ``_NAMES_CACHED`` names (a client inventing names starts the memory over); a name's
    spelling does not change what is redacted."""
    from proxy.redact import _NAMES_CACHED

    r = Redactor(RedactConfig(headers=("X-Session",)))
    for spelling in ("Authorization", "AUTHORIZATION", "authorization", "X-SESSION", "x-session"):
        out = r.headers([(spelling, "secret"), ("Accept", "a")])
        assert out == {spelling.lower(): "[REDACTED]", "accept": "a"}
    invented = [(f"X-Name-{i}", "v") for i in range(_NAMES_CACHED + 10)]
    for i in range(0, len(invented), 100):
        r.headers(invented[i : i + 100])
    assert len(r._header_names) <= _NAMES_CACHED
    assert r.headers([("X-Name-1", "v"), ("X-Auth-Token", "t"), ("Cookie", "c")]) == {
        "x-name-1": "v",
        "x-auth-token": "[REDACTED]",
        "cookie": "[REDACTED]",
    }


def test_form_sniff_is_linear_on_a_large_body() -> None:
    # a 256 KiB form-like body is matched by a regex without backtracking blow-up
    body = b"&".join(b"k%d=%s" % (i, b"v" * 20) for i in range(10_000)) + b"&password=x"
    out = redactor().body(body, None)
    assert out is not None and out.endswith(b"password=%5BREDACTED%5D")
