"""compare() on real JSON bodies: one test per rule kind, plus status, headers and bodies."""

from __future__ import annotations

import copy
import json
from typing import Any

import orjson

from config.schema import CompareConfig
from diff.compare import compare, compare_json
from diff.rules import RuleBook, RuleSet
from graygate.values import Answer, Difference

JSON = {"content-type": "application/json"}

ORDER = """{
  "order_id": 1042,
  "status": "paid",
  "created_at": "2025-03-01T10:15:00.123456Z",
  "request_id": "8f0c6a8e-2b1d-4d5e-9c1f-7a6b5c4d3e2f",
  "customer": {"id": 77, "name": "Ada Lovelace", "email": "ada@example.com", "vip": false,
               "address": {"city": "London", "postcode": "NW1 6XE", "request_id": "r-1"}},
  "items": [
    {"sku": "KB-01", "name": "Mechanical keyboard", "qty": 1, "price": 89.9, "in_stock": true},
    {"sku": "MS-02", "name": "Ergonomic mouse", "qty": 2, "price": 39.5, "in_stock": true},
    {"sku": "HB-03", "name": "USB-C hub", "qty": 1, "price": 24.0, "in_stock": false}
  ],
  "tags": ["gift", "express", "eu"],
  "totals": {"subtotal": 192.9, "tax": 36.65, "shipping": 0.0, "total": 229.55,
             "currency": "EUR"},
  "stock_deducted": true,
  "meta": {"host": "orders-3", "took_ms": 12, "version": "1.14.2",
           "trace": {"span": "ab12", "sampled": true}}
}"""


def order() -> dict[str, Any]:
    return json.loads(ORDER)


def rules(cfg: dict[str, Any] | None = None) -> RuleSet:
    book = RuleBook.from_config(CompareConfig.model_validate(cfg or {}))
    return book.for_endpoint(book.matcher.endpoint("GET", "/api/orders/1042"))


def endpoint_rules(**spec: Any) -> RuleSet:
    return rules({"endpoints": [{"match": "GET /api/orders/{id}", **spec}]})


def side(body: Any, status: int = 200, headers: dict[str, str] | None = None, **kw: Any) -> Answer:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return Answer(status=status, headers=JSON if headers is None else headers, body=raw, **kw)


def diff(a: Any, b: Any, rs: RuleSet | None = None) -> list[Difference]:
    return compare(side(a), side(b), rs or rules())


def paths(diffs: list[Difference]) -> list[str]:
    return sorted(d.path for d in diffs)


# -- the fast path, and what is not a difference ----------------------------------------------


def test_equal_bytes_and_equal_content() -> None:
    raw = ORDER.encode()
    assert compare(side(raw), side(raw), rules()) == []
    # Re-serialised compactly, with keys in another order: the same JSON.
    reordered = orjson.dumps(dict(reversed(list(order().items()))))
    assert compare(side(raw), side(reordered), rules()) == []


def test_int_and_float_with_equal_value_are_equal() -> None:
    # Python prints 24.0 and 0.0; a Go service prints 24 and 0.
    go = ORDER.replace('"price": 24.0', '"price": 24').replace('"shipping": 0.0', '"shipping": 0')
    assert go != ORDER
    assert compare(side(ORDER.encode()), side(go.encode()), rules()) == []


# -- strict -------------------------------------------------------------------------------------


def test_strict_default_and_named() -> None:
    b = order()
    b["status"] = "refunded"
    b["customer"]["name"] = "Ada King"
    found = {d.path: d for d in diff(order(), b, endpoint_rules(strict=["$.status"]))}
    assert set(found) == {"$.status", "$.customer.name"}
    s = found["$.status"]
    assert (s.kind, s.primary_value, s.other_value, s.judgement, s.rule) == (
        "value",
        "paid",
        "refunded",
        "strict",
        "strict $.status",
    )
    assert found["$.customer.name"].rule == "strict (default)"
    assert found["$.customer.name"].field == "$.customer.name"


def test_default_ignore_counts_only_named_paths() -> None:
    rs = endpoint_rules(
        default="ignore",
        strict=["$.status", "$.customer.address.city"],
        tolerance={"$.totals.total": {"abs": 0.01}},
    )
    b = order()
    b["customer"]["name"] = "someone else"
    b["items"].pop()
    b["meta"]["host"] = "go-1"
    assert diff(order(), b, rs) == []
    b["customer"]["address"]["city"] = "Paris"
    b["totals"]["total"] = 230.0
    found = {d.path: d for d in diff(order(), b, rs)}
    assert set(found) == {"$.customer.address.city", "$.totals.total"}
    assert found["$.totals.total"].judgement == "tolerance"
    # A strict path inside a subtree the other side lacks: reported as missing there.
    del b["customer"]
    found = {d.path: d for d in diff(order(), b, rs)}
    assert found["$.customer.address.city"].kind == "missing"


# -- tolerance -----------------------------------------------------------------------------------


def test_tolerance_abs() -> None:
    rs = endpoint_rules(tolerance={"$.totals.total": {"abs": 0.01}})
    b = order()
    b["totals"]["total"] = 229.56  # exactly one cent: within
    assert diff(order(), b, rs) == []
    b["totals"]["total"] = 229.57
    [d] = diff(order(), b, rs)
    assert (d.path, d.kind, d.judgement, d.rule) == (
        "$.totals.total",
        "value",
        "tolerance",
        "tolerance $.totals.total abs=0.01",
    )
    assert (d.primary_value, d.other_value) == (229.55, 229.57)


def test_tolerance_rel_on_every_item() -> None:
    rs = endpoint_rules(tolerance={"$.items[*].price": {"rel": 0.001}})
    b = order()
    b["items"][0]["price"] = 89.95  # 0.056 %
    assert diff(order(), b, rs) == []
    b["items"][2]["price"] = 24.1  # 0.41 %
    [d] = diff(order(), b, rs)
    assert (d.path, d.field, d.judgement) == ("$.items[2].price", "$.items[*].price", "tolerance")
    assert d.rule == "tolerance $.items[*].price rel=0.001"


def test_tolerance_passes_within_either_bound() -> None:
    rs = endpoint_rules(tolerance={"$.totals.*": {"abs": 0.05, "rel": 0.0001}})
    b = order()
    b["totals"]["tax"] = 36.69  # abs 0.04: within abs only
    b["totals"]["total"] = 229.57  # abs 0.02: within both
    assert diff(order(), b, rs) == []
    b["totals"]["subtotal"] = 193.0  # 0.1 and 0.05 %: within neither
    [d] = diff(order(), b, rs)
    assert d.path == "$.totals.subtotal" and d.judgement == "tolerance"


def test_non_numbers_at_a_tolerance_path_are_strict() -> None:
    rs = endpoint_rules(tolerance={"$.totals": {"abs": 1.0}})
    b = order()
    b["totals"]["currency"] = "USD"
    b["totals"]["total"] = "229.55"
    b["totals"]["tax"] = 36.9  # a number within the bound
    found = {d.path: d for d in diff(order(), b, rs)}
    assert set(found) == {"$.totals.currency", "$.totals.total"}
    assert found["$.totals.currency"].judgement == "strict"
    assert found["$.totals.currency"].rule == "tolerance $.totals abs=1 (not a numeric difference)"
    assert found["$.totals.total"].kind == "type"


# -- ignore ----------------------------------------------------------------------------------


def test_ignore_one_level_star() -> None:
    rs = rules({"defaults": {"ignore": ["$.meta.*"]}})
    b = order()
    b["meta"]["host"] = "orders-go-1"
    b["meta"]["trace"] = {"span": "ff00"}
    assert diff(order(), b, rs) == []
    b["meta"]["region"] = "eu"  # a new member is also one level below meta
    assert diff(order(), b, rs) == []
    del b["meta"]  # meta itself is not ignored
    [d] = diff(order(), b, rs)
    assert (d.path, d.kind) == ("$.meta", "missing")


def test_ignore_any_depth_double_star() -> None:
    rs = rules({"defaults": {"ignore": ["$.meta.**"]}})
    b = order()
    b["meta"]["trace"]["span"] = "ff00"
    b["meta"]["trace"]["sampled"] = 1
    b["meta"]["took_ms"] = "slow"
    assert diff(order(), b, rs) == []
    del b["meta"]
    assert diff(order(), b, rs) == []  # ** matches meta itself too


def test_ignore_descendant_name() -> None:
    rs = rules({"defaults": {"ignore": ["$..request_id"]}})
    b = order()
    b["request_id"] = "other"
    b["customer"]["address"]["request_id"] = "r-2"
    assert diff(order(), b, rs) == []
    b["customer"]["address"]["city"] = "Leeds"
    assert paths(diff(order(), b, rs)) == ["$.customer.address.city"]


def test_strict_inside_ignored_subtree() -> None:
    rs = rules({"defaults": {"ignore": ["$.meta.**"], "strict": ["$.meta.version"]}})
    b = order()
    b["meta"]["host"] = "x"
    b["meta"]["version"] = "2.0.0"
    [d] = diff(order(), b, rs)
    assert (d.path, d.rule) == ("$.meta.version", "strict $.meta.version")


# -- arrays --------------------------------------------------------------------------------


NEW_ITEM = {"sku": "CB-00", "name": "Cable", "qty": 3, "price": 4.5, "in_stock": True}


def test_keyed_array_inserted_element_is_one_difference() -> None:
    rs = endpoint_rules(arrays={"$.items": {"key": "sku"}})
    b = order()
    b["items"].insert(0, NEW_ITEM)
    [d] = diff(order(), b, rs)
    assert (d.path, d.field, d.kind) == ("$.items[0]", "$.items[*]", "extra")
    assert d.other_value == NEW_ITEM and d.primary_value is None
    assert d.rule == "strict (default); array $.items key=sku"
    # A changed field of a paired element is reported at the primary's index.
    b["items"][3]["qty"] = 2
    found = {d.path: d for d in diff(order(), b, rs)}
    assert set(found) == {"$.items[0]", "$.items[2].qty"}
    # Without the rule, the same insertion shifts every element.
    plain = diff(order(), b)
    assert len(plain) > 5 and any(d.kind == "length" for d in plain)


def test_keyed_array_missing_element_and_order() -> None:
    rs = endpoint_rules(arrays={"$.items": {"key": "sku"}})
    b = order()
    b["items"] = [b["items"][2], b["items"][0]]
    found = {(d.path, d.kind): d for d in diff(order(), b, rs)}
    assert set(found) == {("$.items[1]", "missing"), ("$.items", "order")}
    assert found[("$.items", "order")].primary_value == ["KB-01", "HB-03"]
    assert found[("$.items", "order")].other_value == ["HB-03", "KB-01"]
    # key + unordered: the order does not count.
    rs = endpoint_rules(arrays={"$.items": {"key": "sku", "unordered": True}})
    assert [(d.path, d.kind) for d in diff(order(), b, rs)] == [("$.items[1]", "missing")]


def test_unordered_array_is_a_multiset() -> None:
    rs = endpoint_rules(arrays={"$.tags": {"unordered": True}, "$.items": {"unordered": True}})
    b = order()
    b["tags"] = ["eu", "gift", "express"]
    b["items"] = list(reversed(b["items"]))
    assert diff(order(), b, rs) == []
    b["tags"] = ["eu", "gift", "express", "eu"]
    [d] = diff(order(), b, rs)
    assert (d.path, d.kind, d.other_value) == ("$.tags[3]", "extra", "eu")
    # An edited element of an unordered array: paired by similarity, judged field by field.
    b = order()
    b["items"] = list(reversed(b["items"]))
    b["items"][1]["qty"] = 5  # MS-02, at primary index 1
    [d] = diff(order(), b, rs)
    assert (d.path, d.kind, d.primary_value, d.other_value) == ("$.items[1].qty", "value", 2, 5)


def test_unordered_pairing_follows_the_rules() -> None:
    rs = endpoint_rules(
        arrays={"$.items": {"unordered": True}},
        ignore=["$.items[*].in_stock"],
        tolerance={"$.items[*].price": {"abs": 0.1}},
    )
    b = order()
    b["items"] = list(reversed(b["items"]))
    for item in b["items"]:
        item["in_stock"] = not item["in_stock"]
        item["price"] += 0.05
    assert diff(order(), b, rs) == []


def test_plain_array_by_index_with_length() -> None:
    b = order()
    b["tags"].append("b2b")
    [d] = diff(order(), b)
    assert (d.path, d.kind, d.primary_value, d.other_value) == ("$.tags", "length", 3, 4)
    b["tags"] = ["express", "gift", "eu"]
    assert paths(diff(order(), b)) == ["$.tags[0]", "$.tags[1]"]


# -- types, missing, extra ------------------------------------------------------------------


def test_type_differences() -> None:
    b = order()
    b["order_id"] = "1042"
    b["stock_deducted"] = 1  # true against 1: a type difference, though True == 1
    b["customer"]["vip"] = 0  # ... also deep inside a container == finds equal
    b["items"][0]["in_stock"] = 1.0
    b["totals"] = [b["totals"]]
    found = {d.path: d for d in diff(order(), b)}
    assert set(found) == {
        "$.order_id",
        "$.stock_deducted",
        "$.customer.vip",
        "$.items[0].in_stock",
        "$.totals",
    }
    assert all(d.kind == "type" and d.judgement == "strict" for d in found.values())
    assert (found["$.order_id"].primary_value, found["$.order_id"].other_value) == (1042, "1042")
    assert (found["$.customer.vip"].primary_value, found["$.customer.vip"].other_value) == (
        False,
        0,
    )


def test_missing_and_extra_keys() -> None:
    b = order()
    del b["customer"]["email"]
    b["customer"]["phone"] = "+44 20 7946 0000"
    found = {d.path: d for d in diff(order(), b)}
    assert found["$.customer.email"].kind == "missing"
    assert found["$.customer.email"].primary_value == "ada@example.com"
    assert found["$.customer.email"].other_value is None
    assert found["$.customer.phone"].kind == "extra"
    assert found["$.customer.phone"].other_value == "+44 20 7946 0000"
    assert len(found) == 2


# -- status, errors, headers ----------------------------------------------------------------


def test_status() -> None:
    [d] = compare(side(order()), side({"error": "not found"}, status=404), rules())
    assert (d.path, d.kind, d.primary_value, d.other_value, d.rule) == (
        "status",
        "status",
        200,
        404,
        "strict status",
    )
    # status: ignore -> the bodies are compared instead.
    found = compare(side(order()), side(order(), status=201), endpoint_rules(status="ignore"))
    assert found == []


def test_error_sides() -> None:
    ok = side(order())
    timeout = Answer(status=None, headers={}, body=None, error="timeout")
    [d] = compare(ok, timeout, rules())
    assert (d.path, d.kind, d.primary_value, d.other_value, d.judgement) == (
        "status",
        "status",
        200,
        {"error": "timeout"},
        "strict",
    )
    assert compare(timeout, Answer(None, {}, None, error="timeout"), rules()) == []
    [d] = compare(timeout, Answer(None, {}, None, error="refused"), rules())
    assert (d.primary_value, d.other_value) == ({"error": "timeout"}, {"error": "refused"})
    # status: ignore does not hide an answer that never came
    assert len(compare(ok, timeout, endpoint_rules(status="ignore"))) == 1


def test_headers_case_insensitive_and_ignore_wins() -> None:
    a = side(
        order(),
        headers={
            "content-type": "application/json; charset=utf-8",
            "x-version": "1",
            "date": "Mon",
        },
    )
    b = side(order(), headers={"Content-Type": "Application/JSON", "X-Version": "2", "date": "Tue"})
    assert compare(a, b, rules()) == []  # only content-type is strict by default
    rs = rules({"defaults": {"headers": {"strict": ["Content-Type", "X-Version", "Date"]}}})
    [d] = compare(a, b, rs)  # date stays ignored: the ignore list wins
    assert (d.path, d.field, d.kind, d.primary_value, d.other_value) == (
        "header:x-version",
        "header:x-version",
        "header",
        "1",
        "2",
    )
    c = side(order(), headers={"content-type": "application/problem+json"})
    [d] = compare(a, c, rules())
    assert d.path == "header:content-type" and d.rule == "strict header content-type"
    rs = endpoint_rules(headers={"ignore": ["content-type"]})
    assert compare(a, c, rs) == []


# -- bodies that are not JSON -------------------------------------------------------------


def test_text_body_shows_where_it_differs() -> None:
    html = {"content-type": "text/html; charset=utf-8"}
    page = "<html><body><h1>Order 1042</h1><p>Status: paid</p></body></html>"
    a = side(page.encode(), headers=html)
    b = side(page.replace("paid", "refunded").encode(), headers=html)
    [d] = compare(a, b, rules())
    assert (d.path, d.kind, d.judgement) == ("body", "body", "strict")
    assert d.primary_value["at"] == page.index("paid")
    assert "Status: paid" in d.primary_value["context"]
    assert "Status: refunded" in d.other_value["context"]
    assert "body as text" in (d.rule or "")
    assert compare(a, side(page.encode(), headers=html), rules()) == []


def test_bytes_body_by_hash_and_length() -> None:
    png = {"content-type": "image/png"}
    a = side(b"\x89PNG\r\n\x1a\n" + bytes(range(256)), headers=png)
    b = side(b"\x89PNG\r\n\x1a\n" + bytes(range(255)), headers=png)
    [d] = compare(a, b, rules())
    assert d.kind == "body" and d.primary_value["length"] == 264
    assert d.other_value["length"] == 263 and len(d.other_value["sha256"]) == 64
    assert "body as bytes" in (d.rule or "")


def test_body_that_claims_json_but_is_not() -> None:
    broken = b'{"order_id": 1042, "status": "pa'
    [d] = compare(side(ORDER.encode()), side(broken), rules())
    assert (d.path, d.kind, d.judgement) == ("body", "body", "strict")
    assert d.other_value == {"invalid_json": broken.decode()}
    assert "json" in d.primary_value
    # both broken differently: still one difference, never an exception
    [d] = compare(side(b"<html>oops"), side(broken), rules())
    assert d.primary_value == {"invalid_json": "<html>oops"}
    # an empty body where JSON was promised
    [d] = compare(side(ORDER.encode()), side(b""), rules())
    assert d.other_value == {"empty_body": True}


def test_body_modes_can_be_forced() -> None:
    text = {"content-type": "text/plain"}
    a = side(b'{"a": 1, "b": 2}', headers=text)
    b = side(b'{"b": 2, "a": 1}', headers=text)
    assert len(compare(a, b, rules())) == 1  # as text they differ
    assert compare(a, b, endpoint_rules(body="json")) == []
    [d] = compare(a, b, endpoint_rules(body="bytes"))
    assert "sha256" in d.primary_value


def test_truncated_bodies_are_judged_only_where_certain() -> None:
    """Issue 8 item 7: a cut body is never a match and never a false mismatch."""
    raw = ORDER.encode()
    other = ORDER.replace("8f0c6a8e", "00000000").encode()  # differs in request_id only
    rs = rules({"defaults": {"ignore": ["$..request_id"]}})
    a = side(raw[:300], body_truncated=True)
    b = side(other[:300], body_truncated=True)
    # an ignored field differing before the cut: not a violation, not judgeable
    [d] = compare(a, b, rs)
    assert d.judgement == "unjudgeable" and "truncated" in (d.rule or "")
    # identical prefixes, a strict field differing after the cut: never a match
    cut_after = ORDER.replace('"stock_deducted": true', '"stock_deducted": false').encode()
    assert raw[:300] == cut_after[:300] and raw != cut_after
    [d] = compare(a, side(cut_after[:300], body_truncated=True), rs)
    assert d.judgement == "unjudgeable"
    # one side cut, the other complete: still not judgeable as JSON
    [d] = compare(a, side(raw), rs)
    assert d.judgement == "unjudgeable"
    # status and headers are still judged
    [st] = compare(a, side(raw[:300], status=500, body_truncated=True), rs)
    assert (st.kind, st.judgement) == ("status", "strict")
    # text is compared exactly on the kept bytes, so that difference is strict
    text = {"content-type": "text/plain"}
    [d] = compare(
        side(raw[:300], headers=text, body_truncated=True),
        side(other[:300], headers=text, body_truncated=True),
        rs,
    )
    assert d.judgement == "strict" and "truncated" in (d.rule or "")
    # equal kept text, both cut: not judgeable
    [d] = compare(
        side(raw[:300], headers=text, body_truncated=True),
        side(raw[:300], headers=text, body_truncated=True),
        rs,
    )
    assert d.judgement == "unjudgeable"
    # a complete text body that ended before the other's cut: certainly different
    [d] = compare(
        side(raw[:200], headers=text),
        side(raw[:300], headers=text, body_truncated=True),
        rs,
    )
    assert d.judgement == "strict"
    # an ignored body stays ignored, cut or not
    assert compare(a, b, rules({"defaults": {"ignore": ["$"]}})) == []


# -- limits and the pure helper --------------------------------------------------------------


def test_many_differences_are_capped() -> None:
    a = {"values": list(range(2000))}
    b = {"values": [v + 1 for v in range(2000)]}
    found = diff(a, b)
    assert len(found) == 501
    assert found[-1].other_value == {"more_differences": 1500}


def test_compare_json_and_deep_nesting() -> None:
    assert compare_json(ORDER.encode(), orjson.dumps(order()), rules()) == []
    deep_a = "[" * 900 + "1" + "]" * 900
    deep_b = "[" * 900 + "2" + "]" * 900
    found = compare(side(deep_a.encode()), side(deep_b.encode()), rules())
    assert len(found) == 1 and found[0].judgement == "strict"


def test_differences_are_json_able() -> None:
    b = copy.deepcopy(order())
    b["items"].append(NEW_ITEM)
    b["customer"] = None
    for d in diff(order(), b):
        orjson.dumps([d.primary_value, d.other_value])
