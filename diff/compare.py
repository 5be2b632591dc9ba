"""compare(): one exchange's two answers, judged field by field. Pure: no I/O, no clock.

Order of judgement::

    errors   either side has an error (timeout, refused...)  -> one `status` difference
             (both failed the same way: nothing); nothing else is compared
    status   differs and `status: strict`                    -> one `status` difference;
             headers and body are not compared (a 500 page against an order says it all)
    headers  only the strict names (minus the ignored ones), case-insensitive names;
             content-type is compared as a media type (case, spacing, parameter order and a
             JSON type's `charset=utf-8` do not count)
    body     by mode: `auto` picks JSON for application/json and +json, text for text/*,
             XML, JavaScript, forms; bytes (sha256 and length) for the rest; a body with no
             content-type that looks like JSON is tried as JSON, then as text

Bodies whose bytes are equal are equal: that check comes first and is all the equal case
costs. A body recorded truncated cannot be judged under path rules: the common prefix is
compared as bytes and a difference says ``truncated`` in its rule; it is judged ``strict``
only when that comparison is exact (a text or bytes body, or JSON with no path rules), else
``tolerance`` (it never counts as a certain strict mismatch). Text and bytes bodies are
judged by the judge of ``$`` (``ignore: ["$"]`` or ``default: ignore`` skips them).

JSON: the design decision about DeepDiff
----------------------------------------
Both bodies are parsed with orjson and ONE walker (:class:`_Walker`) goes over both trees
at once, stepping the rules automaton (:mod:`diff.rules`) as it descends, and produces the
Difference list directly. It only descends where something differs. Scalars are compared
with ``==`` and their types (``1 == 1.0`` is no difference; ``True`` against ``1`` is a type
difference though Python finds them equal). Containers are compared by serialising them
with orjson, all the members of an object in one call per side: equal bytes are equal JSON,
types included, at C speed (``==`` alone would miss ``True`` against ``1``); bytes that
differ only by key order are caught by a second, sorted serialisation; anything else (a
real difference, or ``10.0`` printed against ``10``) is walked. Ignored members are pruned
before any of that, unless a strict or tolerance rule names something inside. So a body
that differs only in ignored fields costs its parse, one serialisation of the rest, and a
Python step per member on the way to each ignored field.

DeepDiff is used where it adds what the walker lacks: for an ``unordered`` array, after
equal elements have been matched as a multiset, it decides which of the remaining elements
correspond (its similarity-based pairing under ``ignore_order``), so that an edited element
shows as a few field differences instead of one missing plus one extra. The walker then
judges each pair, so every reported difference has the same semantics whichever way it was
found. :func:`_deepdiff_pairs` is the one function that calls DeepDiff and the one place
that turns rules into its arguments: ``ignore_order_func`` where the rules say an array is
unordered or keyed, and :class:`_RulesOperator` (a ``BaseOperator``) that applies ignore
and tolerance rules and ``1 == 1.0`` while DeepDiff measures distances. Keyed arrays need
no DeepDiff: the key is the pairing.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from functools import lru_cache
from typing import Any

import orjson
from deepdiff import DeepDiff
from deepdiff.operator import BaseOperator

from diff.paths import Location, MatchState, render_field, render_location
from diff.rules import ArraySpec, Judge, RuleSet
from graygate.values import Answer, Difference

__all__ = ["MAX_DIFFERENCES", "compare", "compare_json"]

log = logging.getLogger(__name__)

MAX_DIFFERENCES = 500  # per exchange; past it, one marker difference says how many more
_CONTEXT = 40  # characters of text shown around the first difference
_SNIPPET = 200  # characters of an unparsable body shown
_MAX_VALUE_BYTES = 2048  # a value larger than this (as JSON) is shown clipped
_MAX_PAIRING = 400  # leftover pairs above which unordered elements are not paired
_SORT = orjson.OPT_SORT_KEYS
_dumps = orjson.dumps

_MISSING: Any = object()

# Type classes: what counts as the same JSON type (int and float are both numbers).
_NUM, _STR, _BOOL, _NULL, _OBJ, _ARR = range(6)
_TYPE_CLASS: dict[type, int] = {
    int: _NUM,
    float: _NUM,
    str: _STR,
    bool: _BOOL,
    type(None): _NULL,
    dict: _OBJ,
    list: _ARR,
}


def _clip(value: Any) -> Any:
    """A JSON-able value for a Difference, clipped when large."""
    t = type(value)
    if t is str:
        return value if len(value) <= 500 else value[:500] + "…"
    if t is dict or t is list:
        raw = orjson.dumps(value)
        if len(raw) > _MAX_VALUE_BYTES:
            return {"clipped": raw[:500].decode("utf-8", "replace") + "…", "bytes": len(raw)}
    return value


class _Walker:
    """One walk over two parsed JSON bodies; ``out`` collects the Differences."""

    __slots__ = ("more", "out")

    def __init__(self, out: list[Difference]) -> None:
        self.out = out
        self.more = 0

    # -- reporting -------------------------------------------------------------------------

    def emit(self, loc: Location, kind: str, pv: Any, ov: Any, judgement: str, rule: str) -> None:
        if len(self.out) >= MAX_DIFFERENCES:
            self.more += 1
            return
        self.out.append(
            Difference(
                path=render_location(loc),
                field=render_field(loc),
                kind=kind,
                primary_value=_clip(pv),
                other_value=_clip(ov),
                judgement=judgement,
                rule=rule,
            )
        )

    # -- the walk --------------------------------------------------------------------------

    def node(self, a: Any, b: Any, loc: Location, st: MatchState, j: Judge) -> None:
        """Judge one pair of values at ``loc`` (``j``: the judge inherited from above)."""
        info = st.info
        if info.judge is not None:
            j = info.judge
        ta = type(a)
        tb = type(b)
        if j.kind == "ignore":
            if not info.unignore:
                return
            if ta is tb and (ta is dict or ta is list):
                pass  # walk on: a rule below may count
            else:
                if ta is dict or ta is list:
                    self.gone(a, loc, st, j, "missing", None)
                if tb is dict or tb is list:
                    self.gone(b, loc, st, j, "extra", None)
                return
        if ta is dict and tb is dict:
            self.obj(a, b, loc, st, j)
            return
        if ta is list and tb is list:
            spec = info.array
            if spec is None:
                self.seq(a, b, loc, st, j)
            elif spec.key is not None:
                self.keyed(a, b, loc, st, j, spec)
            else:
                self.unordered(a, b, loc, st, j, spec)
            return
        ca = _TYPE_CLASS.get(ta)
        cb = _TYPE_CLASS.get(tb)
        if ca != cb:
            self.emit(loc, "type", a, b, "strict", _strict_text(j))
        elif ca == _NUM:
            if a == b:
                return
            if j.kind == "tolerance":
                if not j.within(a, b):
                    self.emit(loc, "value", a, b, "tolerance", j.text)
            else:
                self.emit(loc, "value", a, b, "strict", j.text)
        elif a != b:
            self.emit(loc, "value", a, b, "strict", _strict_text(j))

    def obj(
        self, a: dict[str, Any], b: dict[str, Any], loc: Location, st: MatchState, j: Judge
    ) -> None:
        missing = 0
        get = b.get
        named, other = st.children()
        named_get = named.get
        # Member containers are compared after the loop, in one serialisation per side.
        keys: list[str] = []
        conts_a: list[Any] = []
        conts_b: list[Any] = []
        for k, va in a.items():
            vb = get(k, _MISSING)
            tva = type(va)
            if tva is dict or tva is list:
                if type(vb) is tva:
                    child = named_get(k, other)
                    info = child.info
                    if (info.judge or j).kind == "ignore" and not info.unignore:
                        continue
                    keys.append(k)
                    conts_a.append(va)
                    conts_b.append(vb)
                    continue
            elif va == vb:
                tvb = type(vb)
                if tva is tvb or not (tva is bool or tvb is bool):
                    continue  # equal (1 == 1.0 included); True against 1 is walked below
            if vb is _MISSING:
                missing += 1
                self.gone(va, (*loc, k), st.key(k), j, "missing", None)
                continue
            child = named_get(k, other)
            info = child.info
            if (info.judge or j).kind == "ignore" and not info.unignore:
                continue
            self.node(va, vb, (*loc, k), child, j)
        if keys and (len(keys) == 1 or _dumps(conts_a) != _dumps(conts_b)):
            for k, va, vb in zip(keys, conts_a, conts_b, strict=True):
                if not _same_container(va, vb):
                    self.node(va, vb, (*loc, k), named_get(k, other), j)
        if len(b) > len(a) - missing:
            for k, vb in b.items():
                if k not in a:
                    self.gone(vb, (*loc, k), st.key(k), j, "extra", None)

    def seq(self, a: list[Any], b: list[Any], loc: Location, st: MatchState, j: Judge) -> None:
        """A plain array: element by element, then one ``length`` difference."""
        for i, (va, vb) in enumerate(zip(a, b)):  # noqa: B905 - lengths differ on purpose
            if not _same(va, vb):
                self.node(va, vb, (*loc, i), st.index(i), j)
        la, lb = len(a), len(b)
        if la != lb:
            if j.kind != "ignore":
                self.emit(loc, "length", la, lb, "strict", _strict_text(j))
            else:
                for i in range(lb, la):
                    self.gone(a[i], (*loc, i), st.index(i), j, "missing", None)
                for i in range(la, lb):
                    self.gone(b[i], (*loc, i), st.index(i), j, "extra", None)

    def keyed(
        self, a: list[Any], b: list[Any], loc: Location, st: MatchState, j: Judge, spec: ArraySpec
    ) -> None:
        """Elements paired by ``spec.key``: an inserted element is one ``extra``."""
        key = spec.key
        assert key is not None
        by_b: dict[Any, list[int]] = {}
        for i, x in enumerate(b):
            by_b.setdefault(_key_of(x, key), []).append(i)
        for lst in by_b.values():
            lst.reverse()  # pop() gives the first occurrence
        pairs: list[tuple[int, int]] = []
        lone_a: list[int] = []
        for i, x in enumerate(a):
            found = by_b.get(_key_of(x, key))
            if found:
                pairs.append((i, found.pop()))
            else:
                lone_a.append(i)
        lone_b = sorted(i for lst in by_b.values() for i in lst)
        rule = f"{_strict_text(j)}; {spec.text}"
        for i, k in pairs:
            va = a[i]
            vb = b[k]
            if not _same(va, vb):
                self.node(va, vb, (*loc, i), st.index(i), j)
        for i in lone_a:
            self.gone(a[i], (*loc, i), st.index(i), j, "missing", rule)
        for k in lone_b:
            self.gone(b[k], (*loc, k), st.index(k), j, "extra", rule)
        if not spec.unordered and j.kind != "ignore":
            order_b = [k for _, k in pairs]
            if any(x > y for x, y in itertools.pairwise(order_b)):
                keys_a = [_key_value(a[i], key) for i, _ in pairs][:50]
                keys_b = [_key_value(b[k], key) for k in sorted(order_b)][:50]
                self.emit(loc, "order", keys_a, keys_b, "strict", rule)

    def unordered(
        self, a: list[Any], b: list[Any], loc: Location, st: MatchState, j: Judge, spec: ArraySpec
    ) -> None:
        """A multiset: equal elements match whatever their place; the rest are paired by
        similarity (DeepDiff) and judged, or reported missing / extra."""
        by_b: dict[Any, list[int]] = {}
        for i, x in enumerate(b):
            by_b.setdefault(_freeze(x), []).append(i)
        for lst in by_b.values():
            lst.reverse()
        lone_a: list[int] = []
        for i, x in enumerate(a):
            found = by_b.get(_freeze(x))
            if found:
                found.pop()  # equal, bools and all: _freeze tells True from 1
            else:
                lone_a.append(i)
        lone_b = sorted(i for lst in by_b.values() for i in lst)
        if not lone_a and not lone_b:
            return
        pairs, lone_a, lone_b = _deepdiff_pairs(a, b, lone_a, lone_b, st, j)
        for i, k in pairs:
            self.node(a[i], b[k], (*loc, i), st.index(i), j)
        rule = f"{_strict_text(j)}; {spec.text}"
        for i in lone_a:
            self.gone(a[i], (*loc, i), st.index(i), j, "missing", rule)
        for k in lone_b:
            self.gone(b[k], (*loc, k), st.index(k), j, "extra", rule)

    def gone(
        self, v: Any, loc: Location, st: MatchState, j: Judge, kind: str, rule: str | None
    ) -> None:
        """``v`` is on one side only (kind missing: only the primary has it)."""
        info = st.info
        if info.judge is not None:
            j = info.judge
        if j.kind != "ignore":
            pv, ov = (v, None) if kind == "missing" else (None, v)
            self.emit(loc, kind, pv, ov, "strict", rule or _strict_text(j))
            return
        if not info.unignore:
            return
        if type(v) is dict:
            for k, x in v.items():
                self.gone(x, (*loc, k), st.key(k), j, kind, rule)
        elif type(v) is list:
            for i, x in enumerate(v):
                self.gone(x, (*loc, i), st.index(i), j, kind, rule)


def _strict_text(j: Judge) -> str:
    return f"{j.text} (not a numeric difference)" if j.kind == "tolerance" else j.text


def _same_container(a: Any, b: Any) -> bool:
    """Two dicts (or two lists) equal as JSON values. Serialising is the C-speed way to
    compare with JSON's types (``==`` would take True for 1); where the bytes differ only
    by key order it says equal too; a number printed ``10.0`` against ``10`` makes it say
    no, and the walker then looks (and finds no difference)."""
    if _dumps(a) == _dumps(b):
        return True
    return bool(a == b) and _dumps(a, option=_SORT) == _dumps(b, option=_SORT)


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values: 1 and 1.0 alike, True and 1 not (for the walker's fast path)."""
    ta = type(a)
    if ta is dict or ta is list:
        return type(b) is ta and _same_container(a, b)
    if a == b:
        tb = type(b)
        return ta is tb or not (ta is bool or tb is bool)
    return False


_BOOL_TAG = object()
_OBJ_TAG = object()
_ARR_TAG = object()


def _freeze(v: Any) -> Any:
    """A hashable form with JSON equality: 1 and 1.0 alike, True and 1 not."""
    t = type(v)
    if t is dict:
        return (_OBJ_TAG, frozenset((k, _freeze(x)) for k, x in v.items()))
    if t is list:
        return (_ARR_TAG, tuple(_freeze(x) for x in v))
    if t is bool:
        return (_BOOL_TAG, v)
    return v


def _key_of(element: Any, key: str) -> Any:
    if type(element) is not dict:
        return _MISSING
    v = element.get(key, _MISSING)
    if type(v) is str or v is _MISSING:
        return v
    return _freeze(v)


def _key_value(element: Any, key: str) -> Any:
    return element.get(key) if type(element) is dict else None


# -- DeepDiff: pairing the leftovers of unordered arrays -----------------------------------


class _RulesOperator(BaseOperator):
    """Makes DeepDiff see values as the rules do while it measures how alike elements are:
    ignored subtrees, numbers within tolerance and ``1 == 1.0`` are no difference."""

    def __init__(self, root_items: list[Any], elem_state: MatchState, judge: Judge) -> None:
        super().__init__()
        self.root_items = root_items
        self.elem_state = elem_state
        self.judge = judge

    def resolve(self, level: Any, diff_instance: Any) -> tuple[MatchState, Judge] | None:
        rel = level.path(output_format="list")
        if diff_instance.t1 is self.root_items:
            if not rel:
                return None  # the list of leftovers itself
            rel = rel[1:]
        st = self.elem_state
        j = st.info.judge or self.judge
        for part in rel:
            st = st.step(part)
            if st.info.judge is not None:
                j = st.info.judge
        return st, j

    def match(self, level: Any) -> bool:
        return True

    def normalize_value_for_hashing(self, parent: Any, obj: Any) -> Any:
        return obj

    def give_up_diffing(self, level: Any, diff_instance: Any) -> bool:
        found = self.resolve(level, diff_instance)
        if found is None:
            return False
        st, j = found
        a, b = level.t1, level.t2
        if j.kind == "ignore" and not st.info.unignore:
            return True
        ta, tb = type(a), type(b)
        if ta in (int, float) and tb in (int, float):
            return a == b or (j.kind == "tolerance" and j.within(a, b))
        return False

    def unordered_here(self, level: Any) -> bool:
        """DeepDiff's ``ignore_order_func``: the leftovers list, and arrays the rules pair."""
        root = level
        while root.up is not None:
            root = root.up
        rel = level.path(output_format="list")
        if root.t1 is self.root_items:
            if not rel:
                return True
            rel = rel[1:]
        st = self.elem_state
        for part in rel:
            st = st.step(part)
        return st.info.array is not None


def _deepdiff_pairs(
    a: list[Any], b: list[Any], lone_a: list[int], lone_b: list[int], st: MatchState, j: Judge
) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Which of the unmatched elements of an unordered array correspond.

    Returns (pairs of primary/other indexes to judge, primary indexes with no counterpart,
    other indexes with no counterpart). Elements DeepDiff finds equal under the rules are
    in none of them. The one place DeepDiff is called.
    """
    if not lone_a or not lone_b or len(lone_a) * len(lone_b) > _MAX_PAIRING:
        return [], lone_a, lone_b
    items_a = [a[i] for i in lone_a]
    items_b = [b[k] for k in lone_b]
    op = _RulesOperator(items_a, st.index(-1), st.info.judge or j)
    try:
        result = DeepDiff(
            items_a,
            items_b,
            view="tree",
            ignore_order=False,
            ignore_order_func=op.unordered_here,
            custom_operators=[op],
            ignore_numeric_type_changes=True,
            report_repetition=False,
            cutoff_intersection_for_pairs=1.0,
            verbose_level=2,
            log_frequency_in_sec=0,
        )
    except Exception:  # DeepDiff is a helper here; a failure must not lose the exchange
        log.exception("DeepDiff failed pairing unordered array elements")
        return [], lone_a, lone_b
    paired: dict[int, int] = {}
    gone_a: set[int] = set()
    gone_b: set[int] = set()
    for report_type, levels in result.tree.items():
        for level in levels:
            top = level
            while top.up is not None and top.up.up is not None:
                top = top.up
            i = top.path(output_format="list")[:1]
            k = top.path(output_format="list", use_t2=True)[:1]
            if top is level and report_type == "iterable_item_removed":
                gone_a.add(i[0])
            elif top is level and report_type == "iterable_item_added":
                gone_b.add(k[0])
            elif i and k:
                paired[i[0]] = k[0]
    pairs = sorted((lone_a[i], lone_b[k]) for i, k in paired.items())
    return pairs, [lone_a[i] for i in sorted(gone_a)], [lone_b[k] for k in sorted(gone_b)]


# -- bodies ------------------------------------------------------------------------------------

_TEXT_TYPES = (
    "text/",
    "application/xml",
    "application/javascript",
    "application/ecmascript",
    "application/x-www-form-urlencoded",
    "application/graphql",
    "application/yaml",
    "application/x-yaml",
    "application/x-ndjson",
    "application/csv",
)


def _media_type(content_type: str | None) -> str:
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def _is_json(media: str) -> bool:
    return media == "application/json" or media.endswith("+json") or media == "text/json"


def _is_text(media: str) -> bool:
    return media.startswith(_TEXT_TYPES) or media.endswith("+xml")


@lru_cache(maxsize=256)
def _body_mode(ct_a: str | None, ct_b: str | None) -> str:
    """``json``, ``text``, ``bytes``, or ``sniff`` (no content-type on either side)."""
    ma, mb = _media_type(ct_a), _media_type(ct_b)
    if _is_json(ma) or _is_json(mb):
        return "json"
    if _is_text(ma) or _is_text(mb):
        return "text"
    if not ma and not mb:
        return "sniff"
    return "bytes"


def _charset(content_type: str | None) -> str:
    if content_type:
        for param in content_type.split(";")[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "charset" and value.strip():
                return value.strip().strip('"')
    return "utf-8"


def _decode(raw: bytes, content_type: str | None) -> str:
    try:
        return raw.decode(_charset(content_type), "replace")
    except LookupError:
        return raw.decode("utf-8", "replace")


def _norm_content_type(value: str) -> str:
    media = _media_type(value)
    params = []
    for param in value.split(";")[1:]:
        name, _, val = param.partition("=")
        name = name.strip().lower()
        val = val.strip().strip('"')
        if name == "charset":
            val = val.lower()
            if _is_json(media) and val in ("utf-8", "utf8"):
                continue
        if name:
            params.append(f"{name}={val}")
    return ";".join([media, *sorted(params)])


def _header(headers: dict[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        for k, v in headers.items():
            if k.lower() == name:
                return v
    return value


def _side_status(side: Answer) -> Any:
    return {"error": side.error} if side.error is not None else side.status


def _body_diff(pv: Any, ov: Any, judgement: str, rule: str) -> Difference:
    return Difference(
        path="body",
        field="body",
        kind="body",
        primary_value=pv,
        other_value=ov,
        judgement=judgement,
        rule=rule,
    )


def _snippet(raw: bytes) -> str:
    return raw[: _SNIPPET * 4].decode("utf-8", "replace")[:_SNIPPET]


def _compare_text(ta: str, tb: str, rule: str) -> Difference | None:
    if ta == tb:
        return None
    n = min(len(ta), len(tb))
    pos = 0
    step = 256
    while pos < n and ta[pos : pos + step] == tb[pos : pos + step]:
        pos += step
    while pos < n and ta[pos] == tb[pos]:
        pos += 1
    start = max(0, pos - _CONTEXT // 2)

    def show(t: str) -> dict[str, Any]:
        return {"at": pos, "context": t[start : pos + _CONTEXT], "length": len(t)}

    return _body_diff(show(ta), show(tb), "strict", rule)


def _bytes_value(raw: bytes) -> dict[str, Any]:
    return {"sha256": hashlib.sha256(raw).hexdigest(), "length": len(raw)}


def _blank(raw: bytes) -> bool:
    return not raw or raw.isspace()


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        # orjson refuses a few things the standard library reads (a BOM, NaN).
        try:
            return json.loads(raw.decode("utf-8-sig"))
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


def compare_json(a_raw: bytes, b_raw: bytes, rules: RuleSet) -> list[Difference]:
    """Compare two JSON bodies under ``rules``; ValueError if either does not parse."""
    if a_raw == b_raw:
        return []
    a = _loads(a_raw)
    b = _loads(b_raw)
    out: list[Difference] = []
    _walk(a, b, a_raw, b_raw, rules, out)
    return out


def _walk(
    a: Any, b: Any, a_raw: bytes, b_raw: bytes, rules: RuleSet, out: list[Difference]
) -> None:
    try:
        _walk_tree(a, b, rules, out)
    except (RecursionError, orjson.JSONEncodeError):
        # Deeper than Python's stack or orjson's limit (254 levels): judge the whole body as
        # one strict value.
        del out[:]
        try:
            same = bool(a == b)
        except RecursionError:
            same = False
        if not same:
            out.append(
                _body_diff(
                    {"json": _snippet(a_raw)},
                    {"json": _snippet(b_raw)},
                    "strict",
                    "strict body (nested too deeply for path rules)",
                )
            )


def _walk_tree(a: Any, b: Any, rules: RuleSet, out: list[Difference]) -> None:
    walker = _Walker(out)
    walker.node(a, b, (), rules.root, rules.default)
    if walker.more:
        out.append(
            Difference(
                path="$",
                field="$",
                kind="body",
                primary_value=None,
                other_value={"more_differences": walker.more},
                judgement="strict",
                rule=f"more than {MAX_DIFFERENCES} differences; the rest not listed",
            )
        )


def _compare_body(primary: Answer, other: Answer, rules: RuleSet, out: list[Difference]) -> None:
    a_raw = primary.body or b""
    b_raw = other.body or b""
    if a_raw == b_raw:
        return
    root_info = rules.root.info
    root_judge: Judge = root_info.judge or rules.default
    if root_judge.kind == "ignore" and not root_info.unignore:
        return
    ct_a = _header(primary.headers, "content-type")
    ct_b = _header(other.headers, "content-type")
    mode = rules.body if rules.body != "auto" else _body_mode(ct_a, ct_b)
    if mode == "sniff":
        first = a_raw[:64].lstrip()[:1] or b_raw[:64].lstrip()[:1]
        mode = "sniff-json" if first in (b"{", b"[") else "text"

    if primary.body_truncated or other.body_truncated:
        _compare_truncated(primary, other, a_raw, b_raw, mode, rules, root_judge, out)
        return

    if mode in ("json", "sniff-json"):
        try:
            a = _MISSING if _blank(a_raw) else _loads(a_raw)
        except ValueError:
            a = _MISSING
        try:
            b = _MISSING if _blank(b_raw) else _loads(b_raw)
        except ValueError:
            b = _MISSING
        if a is not _MISSING and b is not _MISSING:
            _walk(a, b, a_raw, b_raw, rules, out)
            return
        if mode == "json":
            out.append(
                _body_diff(
                    _json_summary(a_raw, a),
                    _json_summary(b_raw, b),
                    "strict",
                    "strict body (must parse as JSON)",
                )
            )
            return
        mode = "text"
    if root_judge.kind == "ignore":
        return
    if mode == "text":
        diff = _compare_text(
            _decode(a_raw, ct_a), _decode(b_raw, ct_b), f"{_strict_text(root_judge)}, body as text"
        )
        if diff is not None:
            out.append(diff)
        return
    out.append(
        _body_diff(
            _bytes_value(a_raw),
            _bytes_value(b_raw),
            "strict",
            f"{_strict_text(root_judge)}, body as bytes",
        )
    )


def _json_summary(raw: bytes, parsed: Any) -> dict[str, Any]:
    if _blank(raw):
        return {"empty_body": True}
    if parsed is _MISSING:
        return {"invalid_json": _snippet(raw)}
    return {"json": _snippet(raw)}


def _compare_truncated(
    primary: Answer,
    other: Answer,
    a_raw: bytes,
    b_raw: bytes,
    mode: str,
    rules: RuleSet,
    root_judge: Judge,
    out: list[Difference],
) -> None:
    n = min(len(a_raw), len(b_raw))
    differs = a_raw[:n] != b_raw[:n]
    if not differs:
        # Equal prefixes: they differ for sure only if a complete body ended first.
        shorter = primary if len(a_raw) < len(b_raw) else other
        differs = len(a_raw) != len(b_raw) and not shorter.body_truncated
    if not differs:
        return
    exact = mode not in ("json", "sniff-json") or rules.plain
    pos = 0
    while pos < n and a_raw[pos] == b_raw[pos]:
        pos += 1

    def show(raw: bytes, side: Answer) -> dict[str, Any]:
        return {
            "at": pos,
            "context": raw[max(0, pos - _CONTEXT // 2) : pos + _CONTEXT].decode("utf-8", "replace"),
            "length": len(raw),
            "truncated": side.body_truncated,
        }

    how = "" if exact else "; path rules cannot apply to a partial JSON body"
    out.append(
        _body_diff(
            show(a_raw, primary),
            show(b_raw, other),
            "strict" if exact else "tolerance",
            f"{_strict_text(root_judge)}, truncated: compared the first {n} bytes{how}",
        )
    )


def compare(primary: Answer, other: Answer, rules: RuleSet) -> list[Difference]:
    """Every difference between the primary's answer and the other's, judged by ``rules``."""
    pe, oe = primary.error, other.error
    if pe is not None or oe is not None:
        if pe == oe:
            return []
        return [
            Difference(
                path="status",
                field="status",
                kind="status",
                primary_value=_side_status(primary),
                other_value=_side_status(other),
                judgement="strict",
                rule="strict status (error)",
            )
        ]
    if primary.status != other.status and rules.status_strict:
        return [
            Difference(
                path="status",
                field="status",
                kind="status",
                primary_value=primary.status,
                other_value=other.status,
                judgement="strict",
                rule="strict status",
            )
        ]
    out: list[Difference] = []
    ha, hb = primary.headers, other.headers
    names = rules.strict_headers
    if rules.all_headers:
        names = tuple(sorted({k.lower() for k in (*ha, *hb)} - rules.ignored_headers))
    for name in names:
        va = _header(ha, name)
        vb = _header(hb, name)
        if va == vb:
            continue
        if va is not None and vb is not None:
            va_s, vb_s = va.strip(), vb.strip()
            if va_s == vb_s or (
                name == "content-type" and _norm_content_type(va_s) == _norm_content_type(vb_s)
            ):
                continue
        out.append(
            Difference(
                path=f"header:{name}",
                field=f"header:{name}",
                kind="header",
                primary_value=va,
                other_value=vb,
                judgement="strict",
                rule=f"strict header {name}",
            )
        )
    _compare_body(primary, other, rules, out)
    return out
