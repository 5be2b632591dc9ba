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
             content-type that looks like JSON is tried as JSON, then as text; a body
             larger than ``compare.max_body_bytes`` (either side) is compared as bytes

Bodies whose bytes are equal are equal: that check comes first and is all the equal case
costs -- unless either body was recorded truncated (``Answer.body_truncated``): equal
prefixes say nothing about what was cut. Status and headers are judged as always; the body
is judged only where that is certain: a text or bytes body whose kept bytes differ, or
whose complete side ended first, is one ``strict`` difference; anything else (a JSON body,
whose path rules cannot apply to a partial document; equal prefixes of cut bodies) is one
``unjudgeable`` body difference, which makes the exchange ``unjudgeable`` (never a match,
never a mismatch; the verdict's ``judgeable`` check bounds how many there may be). Text and
bytes bodies are judged by the judge of ``$`` (``ignore: ["$"]`` or ``default: ignore``
skips them).

A body the recorder did not keep (``record.bodies.sample``) is known by its sha256
(``Answer.body_sha256``): equal digests are equal bodies, nothing differs; unequal ones
are one ``unjudgeable`` body difference, as above (what differs, and whether a rule
excuses it, is unknown).

JSON: parsing
-------------
Both bodies are read as if by one parser: orjson first; the standard library when orjson
refuses a body, or when the body holds an integer beyond 64 bits (orjson reads those as
floats, rounded). The standard library keeps integers exact and reads the
non-standard constants ``NaN``, ``Infinity`` and ``-Infinity`` as named constants: equal to
the same constant only (identical ``NaN`` s are equal; ``NaN`` against ``null``, or
``Infinity`` against ``-Infinity``, differ). A leading UTF-8 byte order mark is dropped. Two
blank bodies (empty, whitespace) are equal. A body neither parser reads (not JSON, or nested
deeper than 1024 levels) is compared as text in ``sniff`` mode and is one strict ``body``
difference in ``json`` mode.

Big integers cost nothing on ordinary documents: the first walk is *guarded*. A rounded big
integer can only show as a float of magnitude 2**63 or more, so wherever the walk would
conclude "equal" (or judge a number) with such a float involved, or finds two containers
equal by their serialisation and that serialisation holds an exponent (``e+``, how orjson
writes every float from 1e16 up), it stops; only then are both bodies scanned for a run of
19 digits, and if one is found both are read again exactly and walked again (else the same
trees are walked unguarded). Floats below 1e16 are never rounded integers.

JSON: the walk
--------------
ONE walker (:class:`_Walker`) goes over both trees at once, iteratively (an explicit stack,
so depth costs no recursion and every rule applies at any depth), stepping the rules
automaton (:mod:`diff.rules`) as it descends, and produces the Difference list directly. It
only descends where something differs. Scalars are compared with ``==`` and their types
(``1 == 1.0`` is no difference; ``True`` against ``1`` is a type difference though Python
finds them equal; no rounding anywhere). Containers are compared by serialising them with
orjson, all the members of an object in one call per side: equal bytes are equal JSON, types
included, at C speed; bytes that differ only by key order are caught by a second, sorted
serialisation; anything else (a real difference, ``10.0`` printed against ``10``, a
non-finite constant orjson does not write, more than 254 levels) is walked. Ignored members
are pruned before any of that, unless a strict or tolerance rule names something inside.
Where an object holds such pruned members (a request id, ``meta``), the rest of it is first
serialised whole, one call per side, without them: equal bytes end the comparison there
(the usual case of bodies that differ in ignored fields only; the set of pruned names is
derived once per automaton state, in ``MatchState.memo``).

Under a tolerance rule, two strings that both spell decimal numbers (``"12.30"`` against
``"12.3"``) are compared as those numbers, exactly (decimals); a string against a number is
a type difference.

Arrays: a plain array element by element plus one ``length`` difference. An ``unordered``
array is matched as a multiset with the walker's own equality (:meth:`_Walker.match_rest`):
equal elements first, then elements the rules find equal (ignored members, tolerances), then
the remaining objects (or arrays) are paired by fewest differences when they have something
in common, so an edited element shows as a few field differences; the rest are ``missing`` /
``extra``. A ``key`` array pairs elements whose key occurs exactly once on each side; the
elements without the key or with a duplicated key are matched as an unordered multiset
(never by position). DeepDiff is not used by the engine (its ``ignore_order`` pairing
rounded floats and took ``True`` for ``1``); the tests compare the engine with it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import re
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

import orjson

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
_PAIR_PROBE_CAP = 64  # differences counted when scoring one candidate pair
_SORT = orjson.OPT_SORT_KEYS
_dumps = orjson.dumps

_MISSING: Any = object()

# Type classes: what counts as the same JSON type (int and float are both numbers).
_NUM, _STR, _BOOL, _NULL, _OBJ, _ARR = range(6)


_BIG = 2.0**63  # floats at or beyond this magnitude may be integers orjson rounded
_EXPONENT = b"e+"  # orjson writes floats from 1e16 up with a positive exponent
# Looked for first: one byte is a memchr, several times cheaper than the two-byte search on
# JSON (full of "e"s); a "+" is rare outside exponents.
_PLUS = ord("+")


class _MaybeRounded(Exception):
    """A guarded walk met a float that may be a rounded big integer (see _loads)."""


def _big_float(v: Any) -> bool:
    return type(v) is float and not -_BIG < v < _BIG


class _NonFinite(float):
    """``NaN``, ``Infinity`` or ``-Infinity`` as a non-standard body spelled it.

    Equal to the same constant only (an identical ``NaN`` is equal, ``NaN`` against
    ``null`` or ``Infinity`` against ``-Infinity`` differs). orjson does not serialise a
    float subclass, so a container holding one is never taken for equal by its bytes and is
    always walked."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> _NonFinite:
        self = super().__new__(cls, text)
        self.text = text
        return self

    def __eq__(self, other: object) -> bool:
        return type(other) is _NonFinite and other.text == self.text

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash(("nonfinite", self.text))

    def __repr__(self) -> str:
        return self.text


_TYPE_CLASS: dict[type, int] = {
    _NonFinite: _NUM,
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
    if t is _NonFinite:
        return value.text
    if t is int and not -(2**63) <= value < 2**64:
        return str(value)  # exact, where a JSON reader would round it
    if t is dict or t is list:
        try:
            raw = orjson.dumps(value, default=_default)
        except orjson.JSONEncodeError:  # deeper than orjson writes
            raw = json.dumps(value, default=_default).encode()
        if len(raw) > _MAX_VALUE_BYTES:
            return {"clipped": raw[:500].decode("utf-8", "replace") + "…", "bytes": len(raw)}
    return value


class _Walker:
    """One walk over two parsed JSON bodies; ``out`` collects the Differences.

    The walk is iterative (an explicit stack of pairs still to judge), so a document nested
    thousands of levels deep is judged with the same rules as a shallow one.
    """

    __slots__ = ("cap", "guard", "more", "out", "todo")

    def __init__(
        self, out: list[Difference], cap: int = MAX_DIFFERENCES, guard: bool = False
    ) -> None:
        self.out = out
        self.more = 0
        self.cap = cap
        self.guard = guard  # raise _MaybeRounded where a rounded big integer could matter
        self.todo: list[tuple[Any, Any, Location, MatchState, Judge]] = []

    def run(self, a: Any, b: Any, loc: Location, st: MatchState, j: Judge) -> None:
        node = self.node
        node(a, b, loc, st, j)
        todo = self.todo
        while todo:
            node(*todo.pop())

    # -- reporting -------------------------------------------------------------------------

    def emit(self, loc: Location, kind: str, pv: Any, ov: Any, judgement: str, rule: str) -> None:
        if len(self.out) >= self.cap:
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
        if self.guard and (_big_float(a) or _big_float(b)):
            raise _MaybeRounded
        if ca != cb:
            if ca == _STR and cb == _STR:  # pragma: no cover - str subclasses do not occur
                pass
            elif j.kind == "tolerance" and _numeric_pair(a, b):
                self.numeric_text(a, b, loc, j)
                return
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
            if ca == _STR and j.kind == "tolerance" and _numeric_pair(a, b):
                self.numeric_text(a, b, loc, j)
                return
            self.emit(loc, "value", a, b, "strict", _strict_text(j))

    def numeric_text(self, a: Any, b: Any, loc: Location, j: Judge) -> None:
        """Under a tolerance rule, numbers written as strings ("12.30" against "12.3") are
        judged as the numbers they spell, when both sides are strings; a string against a
        number is a type difference."""
        if type(a) is not str or type(b) is not str:
            self.emit(loc, "type", a, b, "strict", _strict_text(j))
            return
        x, y = _decimal(a), _decimal(b)
        if x == y:
            return
        if not j.within_decimal(x, y):
            self.emit(loc, "value", a, b, "tolerance", j.text)

    def obj(
        self, a: dict[str, Any], b: dict[str, Any], loc: Location, st: MatchState, j: Judge
    ) -> None:
        if _same_but_pruned(a, b, st, j.kind == "ignore", self.guard):
            return
        missing = 0
        get = b.get
        named, other = st.children()
        named_get = named.get
        kids: list[tuple[Any, Any, Location, MatchState, Judge]] = []
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
                    if (tva is float or tvb is float) and self.guard and not -_BIG < va < _BIG:
                        raise _MaybeRounded
                    continue  # equal (1 == 1.0 included); True against 1 is walked below
            if vb is _MISSING:
                missing += 1
                self.gone(va, (*loc, k), st.key(k), j, "missing", None)
                continue
            child = named_get(k, other)
            info = child.info
            if (info.judge or j).kind == "ignore" and not info.unignore:
                continue
            kids.append((va, vb, (*loc, k), child, j))
        if keys:
            if len(keys) == 1:
                differ = True
            else:
                try:
                    dumped = _dumps(conts_a)
                    differ = dumped != _dumps(conts_b)
                except orjson.JSONEncodeError:
                    differ = True
                else:
                    if not differ and self.guard and _PLUS in dumped and _EXPONENT in dumped:
                        raise _MaybeRounded
            if differ:
                guard = self.guard
                for k, va, vb in zip(keys, conts_a, conts_b, strict=True):
                    if not _same_container(va, vb, guard):
                        kids.append((va, vb, (*loc, k), named_get(k, other), j))
        if len(b) > len(a) - missing:
            for k, vb in b.items():
                if k not in a:
                    self.gone(vb, (*loc, k), st.key(k), j, "extra", None)
        if kids:
            kids.reverse()
            self.todo.extend(kids)

    def seq(self, a: list[Any], b: list[Any], loc: Location, st: MatchState, j: Judge) -> None:
        """A plain array: element by element, then one ``length`` difference."""
        kids = []
        for i, (va, vb) in enumerate(zip(a, b)):  # noqa: B905 - lengths differ on purpose
            if not _same(va, vb, self.guard):
                kids.append((va, vb, (*loc, i), st.index(i), j))
        la, lb = len(a), len(b)
        if la != lb:
            if j.kind != "ignore":
                self.emit(loc, "length", la, lb, "strict", _strict_text(j))
            else:
                for i in range(lb, la):
                    self.gone(a[i], (*loc, i), st.index(i), j, "missing", None)
                for i in range(la, lb):
                    self.gone(b[i], (*loc, i), st.index(i), j, "extra", None)
        if kids:
            kids.reverse()
            self.todo.extend(kids)

    def keyed(
        self, a: list[Any], b: list[Any], loc: Location, st: MatchState, j: Judge, spec: ArraySpec
    ) -> None:
        """Elements paired by ``spec.key``: an inserted element is one ``extra``.

        Only a key that occurs exactly once on each side pairs two elements. Elements
        without the key, or whose key occurs more than once on either side, are matched
        as a multiset and paired by similarity, as in an ``unordered`` array (never by
        position)."""
        key = spec.key
        assert key is not None
        guard = self.guard
        keys_a = [_key_of(x, key, guard) for x in a]
        keys_b = [_key_of(x, key, guard) for x in b]
        count_a: dict[Any, int] = {}
        for k in keys_a:
            count_a[k] = count_a.get(k, 0) + 1
        count_b: dict[Any, int] = {}
        where_b: dict[Any, int] = {}
        for i, k in enumerate(keys_b):
            count_b[k] = count_b.get(k, 0) + 1
            where_b[k] = i

        def unique(k: Any) -> bool:
            return k is not _MISSING and count_a.get(k, 0) <= 1 and count_b.get(k, 0) <= 1

        pairs: list[tuple[int, int]] = []
        lone_a: list[int] = []
        rest_a: list[int] = []
        paired_b: set[int] = set()
        for i, k in enumerate(keys_a):
            if not unique(k):
                rest_a.append(i)
            elif k in where_b:
                pairs.append((i, where_b[k]))
                paired_b.add(where_b[k])
            else:
                lone_a.append(i)
        lone_b: list[int] = []
        rest_b: list[int] = []
        for i, k in enumerate(keys_b):
            if i in paired_b:
                continue
            (lone_b if unique(k) else rest_b).append(i)
        rule = f"{_strict_text(j)}; {spec.text}"
        kids = []
        for i, k in pairs:
            va = a[i]
            vb = b[k]
            if not _same(va, vb, guard):
                kids.append((va, vb, (*loc, i), st.index(i), j))
        if rest_a or rest_b:
            more_pairs, extra_a, extra_b = self.match_rest(a, b, rest_a, rest_b, loc, st, j)
            for i, k in more_pairs:
                kids.append((a[i], b[k], (*loc, i), st.index(i), j))
            lone_a = sorted(lone_a + extra_a)
            lone_b = sorted(lone_b + extra_b)
        for i in lone_a:
            self.gone(a[i], (*loc, i), st.index(i), j, "missing", rule)
        for k in lone_b:
            self.gone(b[k], (*loc, k), st.index(k), j, "extra", rule)
        if not spec.unordered and j.kind != "ignore":
            order_b = [k for _, k in pairs]
            if any(x > y for x, y in itertools.pairwise(order_b)):
                shown_a = [_key_value(a[i], key) for i, _ in pairs][:50]
                shown_b = [_key_value(b[k], key) for k in sorted(order_b)][:50]
                self.emit(loc, "order", shown_a, shown_b, "strict", rule)
        if kids:
            kids.reverse()
            self.todo.extend(kids)

    def unordered(
        self, a: list[Any], b: list[Any], loc: Location, st: MatchState, j: Judge, spec: ArraySpec
    ) -> None:
        """A multiset: equal elements match whatever their place; the rest are paired by
        similarity under the same rules and judged, or reported missing / extra."""
        pairs, lone_a, lone_b = self.match_rest(
            a, b, list(range(len(a))), list(range(len(b))), loc, st, j
        )
        kids = [(a[i], b[k], (*loc, i), st.index(i), j) for i, k in pairs]
        rule = f"{_strict_text(j)}; {spec.text}"
        for i in lone_a:
            self.gone(a[i], (*loc, i), st.index(i), j, "missing", rule)
        for k in lone_b:
            self.gone(b[k], (*loc, k), st.index(k), j, "extra", rule)
        if kids:
            kids.reverse()
            self.todo.extend(kids)

    def match_rest(
        self,
        a: list[Any],
        b: list[Any],
        idx_a: list[int],
        idx_b: list[int],
        loc: Location,
        st: MatchState,
        j: Judge,
    ) -> tuple[list[tuple[int, int]], list[int], list[int]]:
        """Match elements ``idx_a`` of ``a`` with elements ``idx_b`` of ``b`` as multisets.

        Returns (pairs to judge, primary indexes with no counterpart, other indexes with no
        counterpart). Equal elements (JSON equality: ``True`` is not ``1``, no rounding)
        match first; then, among the rest, elements that this engine finds equal under the
        rules (ignored members, tolerances) match; then elements of the same container
        type are paired by fewest differences when they have something in common. Pairs
        are judged by the walker, so a difference means the same however it was found.
        """
        by_b: dict[Any, list[int]] = {}
        frozen_ok = True
        guard = self.guard
        try:
            for k in idx_b:
                by_b.setdefault(_freeze(b[k], guard), []).append(k)
        except RecursionError:
            frozen_ok = False
            by_b = {}
        for lst in by_b.values():
            lst.reverse()
        lone_a: list[int] = []
        if frozen_ok:
            try:
                for i in idx_a:
                    found = by_b.get(_freeze(a[i], guard))
                    if found:
                        found.pop()
                    else:
                        lone_a.append(i)
                lone_b = sorted(k for lst in by_b.values() for k in lst)
            except RecursionError:
                lone_a, lone_b = list(idx_a), list(idx_b)
        else:
            lone_a, lone_b = list(idx_a), list(idx_b)
        if not lone_a or not lone_b or len(lone_a) * len(lone_b) > _MAX_PAIRING:
            return [], lone_a, lone_b
        # Score every leftover pair by how many differences the rules find in it.
        scored: list[tuple[int, int, int]] = []
        for i in lone_a:
            ea = a[i]
            for k in lone_b:
                eb = b[k]
                probe = _Walker([], cap=_PAIR_PROBE_CAP, guard=guard)
                probe.run(ea, eb, (*loc, i), st.index(i), j)
                n = len(probe.out) + probe.more
                if n == 0 or _alike(ea, eb, n):
                    scored.append((n, i, k))
        scored.sort()
        used_a: set[int] = set()
        used_b: set[int] = set()
        pairs: list[tuple[int, int]] = []
        for n, i, k in scored:
            if i in used_a or k in used_b:
                continue
            used_a.add(i)
            used_b.add(k)
            if n:
                pairs.append((i, k))
        pairs.sort()
        return (
            pairs,
            [i for i in lone_a if i not in used_a],
            [k for k in lone_b if k not in used_b],
        )

    def gone(
        self, v: Any, loc: Location, st: MatchState, j: Judge, kind: str, rule: str | None
    ) -> None:
        """``v`` is on one side only (kind missing: only the primary has it)."""
        stack = [(v, loc, st, j)]
        while stack:
            v, loc, st, j = stack.pop()
            info = st.info
            if info.judge is not None:
                j = info.judge
            if j.kind != "ignore":
                pv, ov = (v, None) if kind == "missing" else (None, v)
                self.emit(loc, kind, pv, ov, "strict", rule or _strict_text(j))
                continue
            if not info.unignore:
                continue
            if type(v) is dict:
                stack.extend(reversed([(x, (*loc, k), st.key(k), j) for k, x in v.items()]))
            elif type(v) is list:
                stack.extend(reversed([(x, (*loc, i), st.index(i), j) for i, x in enumerate(v)]))


def _same_but_pruned(
    a: dict[str, Any], b: dict[str, Any], st: MatchState, ignoring: bool, guard: bool
) -> bool:
    """Whether two objects at ``st`` (``ignoring``: the judge there is ``ignore``) are known
    equal once the members the walk would skip anyway are set aside (:func:`_pruned_members`):
    the rest, serialised in one call per side, gives equal bytes. False says "walk them",
    not that they differ; it is said at once when no skipped member is there (the caller
    found the objects unequal, or they are the bodies, whose bytes differ)."""
    memo = st.memo
    pruned = memo.get(ignoring, _MISSING)
    if pruned is _MISSING:
        pruned = memo[ignoring] = _pruned_members(st, ignoring)
    if not pruned or (pruned.isdisjoint(a) and pruned.isdisjoint(b)):
        return False
    ra = a.copy()
    rb = b.copy()
    pop_a = ra.pop
    pop_b = rb.pop
    for k in pruned:
        pop_a(k, None)
        pop_b(k, None)
    try:
        dumped = _dumps(ra)
        if dumped != _dumps(rb):
            return False
    except (orjson.JSONEncodeError, RecursionError):  # non-finite constants, very deep
        return False
    if guard and _PLUS in dumped and _EXPONENT in dumped:
        raise _MaybeRounded
    return True


def _pruned_members(st: MatchState, ignoring: bool) -> frozenset[str] | None:
    """The member names that :meth:`_Walker.obj` skips below ``st`` (judged ``ignore`` with
    no rule below that counts), under an inherited judge that ignores or not; None when
    members with names no rule spells out are skipped too (then nothing is pruned in bulk).
    Derived once per automaton state (``st.memo``)."""

    def skipped(child: MatchState) -> bool:
        info = child.info
        judge = info.judge
        return (judge.kind == "ignore" if judge is not None else ignoring) and not info.unignore

    named, other = st.children()
    if skipped(other):
        return None
    return frozenset(k for k, child in named.items() if skipped(child))


def _alike(a: Any, b: Any, n: int) -> bool:
    """Whether two unequal leftover elements are worth pairing (``n`` differences found):
    two objects or two arrays with fewer differences than members."""
    ta = type(a)
    if ta is not type(b) or not (ta is dict or ta is list):
        return False
    return n < max(len(a), len(b))


def _default(value: Any) -> Any:
    if type(value) is _NonFinite:
        return value.text
    raise TypeError(type(value).__name__)


_NUMBER_TEXT = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*\Z")


def _numeric_pair(a: Any, b: Any) -> bool:
    """Both are numbers or strings that spell finite decimal numbers, one at least a
    string."""
    for v in (a, b):
        t = type(v)
        if t is str:
            if len(v) > 100 or not _NUMBER_TEXT.match(v):
                return False
        elif t is not int and t is not float:
            return False
    return True


def _decimal(text: str) -> Decimal:
    try:
        return Decimal(text.strip())
    except InvalidOperation:  # pragma: no cover - _numeric_pair checked the syntax
        return Decimal("NaN")


def _strict_text(j: Judge) -> str:
    return f"{j.text} (not a numeric difference)" if j.kind == "tolerance" else j.text


def _same_container(a: Any, b: Any, guard: bool = False) -> bool:
    """Two dicts (or two lists) equal as JSON values. Serialising is the C-speed way to
    compare with JSON's types (``==`` would take True for 1); where the bytes differ only
    by key order it says equal too; a number printed ``10.0`` against ``10`` makes it say
    no, and the walker then looks (and finds no difference)."""
    try:
        da = _dumps(a)
        if da == _dumps(b):
            if guard and _PLUS in da and _EXPONENT in da:
                raise _MaybeRounded
            return True
        if not (a == b):
            return False
        sa = _dumps(a, option=_SORT)
        if sa != _dumps(b, option=_SORT):
            return False
        if guard and _PLUS in sa and _EXPONENT in sa:
            raise _MaybeRounded
        return True
    except (orjson.JSONEncodeError, RecursionError):  # non-finite constants, or very deep
        return False


def _same(a: Any, b: Any, guard: bool = False) -> bool:
    """Equal as JSON values: 1 and 1.0 alike, True and 1 not (for the walker's fast path)."""
    ta = type(a)
    if ta is dict or ta is list:
        return type(b) is ta and _same_container(a, b, guard)
    if a == b:
        tb = type(b)
        if guard and (_big_float(a) or _big_float(b)):
            raise _MaybeRounded
        return ta is tb or not (ta is bool or tb is bool)
    return False


_BOOL_TAG = object()
_OBJ_TAG = object()
_ARR_TAG = object()


def _freeze(v: Any, guard: bool = False) -> Any:
    """A hashable form with JSON equality: 1 and 1.0 alike, True and 1 not."""
    t = type(v)
    if t is dict:
        return (_OBJ_TAG, frozenset((k, _freeze(x, guard)) for k, x in v.items()))
    if t is list:
        return (_ARR_TAG, tuple(_freeze(x, guard) for x in v))
    if t is bool:
        return (_BOOL_TAG, v)
    if guard and t is float and not -_BIG < v < _BIG:
        raise _MaybeRounded
    return v


def _key_of(element: Any, key: str, guard: bool = False) -> Any:
    if type(element) is not dict:
        return _MISSING
    v = element.get(key, _MISSING)
    if type(v) is str or v is _MISSING:
        return v
    return _freeze(v, guard)


def _key_value(element: Any, key: str) -> Any:
    return element.get(key) if type(element) is dict else None


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
    """No content: empty, whitespace only, or a byte order mark and whitespace."""
    if raw and raw[0] not in _BLANK_START:
        return False
    if raw[:3] == _BOM:
        raw = raw[3:]
    return not raw or raw.isspace()


_BOM = b"\xef\xbb\xbf"
_OPENERS = (b"{", b"[")
_BLANK_START = frozenset(b" \t\r\n\x0b\x0c\xef")
# Bytes to find a run of 19 digits with: digits map to "0", everything else to " ".
_DIGITS = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))
_LONG_RUN = b"0" * 19


def _long_integer(raw: bytes) -> bool:
    """Whether ``raw`` may hold an integer orjson rounds (beyond 64 bits: 19 digits or
    more). One C-speed translation and search; false positives only cost a slower parse."""
    return _LONG_RUN in raw.translate(_DIGITS)


def _nonfinite_constant(text: str) -> _NonFinite:
    return _NonFinite(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isfinite(value):
        return value
    return _NonFinite("Infinity" if value > 0 else "-Infinity")


def _loads_exact(raw: bytes) -> Any:
    """The standard library's reader: integers of any size kept exact; ``NaN``,
    ``Infinity`` and ``-Infinity`` read as named constants (:class:`_NonFinite`)."""
    try:
        return json.loads(
            raw.decode("utf-8"),
            parse_constant=_nonfinite_constant,
            parse_float=_parse_float,
        )
    except RecursionError:
        raise ValueError("JSON nested too deeply to parse") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"JSON body is not UTF-8: {exc}") from None


def _loads(raw: bytes) -> Any:
    """One body parsed fast: orjson, unless it refuses the body (``NaN``, ``Infinity``),
    then the standard library. orjson reads an integer beyond 64 bits as a rounded float:
    a parse by this function is walked guarded (:func:`_walk_json`), which reads both
    bodies again with :func:`_loads_exact` when such an integer is there. A leading UTF-8
    byte order mark is dropped. ValueError when neither reads it."""
    if raw.startswith(_BOM):
        raw = raw[3:]
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _loads_exact(raw)


def _loads_all_exact(raw: bytes) -> Any:
    if raw[:3] == _BOM:
        raw = raw[3:]
    return _loads_exact(raw)


def compare_json(a_raw: bytes, b_raw: bytes, rules: RuleSet) -> list[Difference]:
    """Compare two JSON bodies under ``rules``; ValueError if either does not parse."""
    if a_raw == b_raw:
        return []
    out: list[Difference] = []
    _walk_json(a_raw, b_raw, _loads(a_raw), _loads(b_raw), rules, out)
    return out


def _walk_json(
    a_raw: bytes, b_raw: bytes, a: Any, b: Any, rules: RuleSet, out: list[Difference]
) -> None:
    """Walk two bodies parsed by :func:`_loads`, exactly: guarded first; when the guard
    trips and either body holds a run of 19 digits, both are read again exactly."""
    start = len(out)
    try:
        if type(a) is dict and type(b) is dict:
            # The common case (bodies that differ in ignored members only) in one step.
            root = rules.root
            judge = root.info.judge or rules.default
            if judge.kind != "ignore" and _same_but_pruned(a, b, root, False, True):
                return
        _walk(a, b, rules, out, True)
        return
    except _MaybeRounded:
        del out[start:]
    if _long_integer(a_raw) or _long_integer(b_raw):
        a, b = _loads_all_exact(a_raw), _loads_all_exact(b_raw)
    _walk(a, b, rules, out)


def _walk(a: Any, b: Any, rules: RuleSet, out: list[Difference], guard: bool = False) -> None:
    walker = _Walker(out, MAX_DIFFERENCES, guard)
    walker.run(a, b, (), rules.root, rules.default)
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


def _digest(side: Answer) -> bytes | None:
    """The sha256 of the side's whole body: stored in its place, or of the body kept;
    None for a body recorded truncated (its digest is not the answer's)."""
    if side.body_sha256 is not None:
        return side.body_sha256
    if side.body_truncated:
        return None
    return hashlib.sha256(side.body or b"").digest()


def _compare_digests(primary: Answer, other: Answer, out: list[Difference]) -> None:
    """A body was not kept, only its digest (``record.bodies.sample``): equal digests are
    equal bodies; unequal ones say that something differs, not what, nor whether a rule
    excuses it: one ``unjudgeable`` body difference (the verdict's ``judgeable`` check
    bounds how many there may be)."""
    a, b = _digest(primary), _digest(other)
    if a is not None and a == b:
        return

    def show(side: Answer, digest: bytes | None) -> dict[str, Any]:
        kept = side.body_sha256 is None
        return {"sha256": digest.hex() if digest else None, "body_kept": kept}

    out.append(
        _body_diff(
            show(primary, a),
            show(other, b),
            "unjudgeable",
            "body not kept, only its digest (record.bodies.sample): the digests differ, "
            "not judgeable",
        )
    )


def _compare_body(primary: Answer, other: Answer, rules: RuleSet, out: list[Difference]) -> None:
    a_raw = primary.body or b""
    b_raw = other.body or b""
    truncated = primary.body_truncated or other.body_truncated
    digests = primary.body_sha256 is not None or other.body_sha256 is not None
    if a_raw == b_raw and not truncated and not digests:
        return
    root_info = rules.root.info
    root_judge: Judge = root_info.judge or rules.default
    if root_judge.kind == "ignore" and not root_info.unignore:
        return
    if digests:
        _compare_digests(primary, other, out)
        return
    ct_a = _header(primary.headers, "content-type")
    ct_b = _header(other.headers, "content-type")
    mode = rules.body if rules.body != "auto" else _body_mode(ct_a, ct_b)
    limit = rules.max_body_bytes
    if limit is not None and (len(a_raw) > limit or len(b_raw) > limit):
        mode = "bytes"  # compare.max_body_bytes: too large to parse; compared as bytes
    if mode == "sniff":
        first = a_raw[:64].lstrip(_BOM + b" \t\r\n")[:1] or b_raw[:64].lstrip(_BOM + b" \t\r\n")[:1]
        mode = "sniff-json" if first in (b"{", b"[") else "text"

    if truncated:
        _compare_truncated(primary, other, a_raw, b_raw, mode, root_judge, out)
        return

    if mode in ("json", "sniff-json"):
        # (A body starting with "{" or "[" is not blank: the common case skips the call.)
        try:
            a = _MISSING if a_raw[:1] not in _OPENERS and _blank(a_raw) else _loads(a_raw)
        except ValueError:
            a = _MISSING
        try:
            b = _MISSING if b_raw[:1] not in _OPENERS and _blank(b_raw) else _loads(b_raw)
        except ValueError:
            b = _MISSING
        if a is not _MISSING and b is not _MISSING:
            _walk_json(a_raw, b_raw, a, b, rules, out)
            return
        if _blank(a_raw) and _blank(b_raw):
            return  # no JSON on either side (empty against "\n"): nothing differs
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
    root_judge: Judge,
    out: list[Difference],
) -> None:
    """One body at least was cut by the recorder: judge what is certain, flag the rest."""
    n = min(len(a_raw), len(b_raw))
    differs = a_raw[:n] != b_raw[:n]
    if not differs:
        # Equal prefixes: they differ for sure only if a complete body ended first.
        shorter = primary if len(a_raw) < len(b_raw) else other
        differs = len(a_raw) != len(b_raw) and not shorter.body_truncated
    # Bytes and text are compared exactly, so differing kept bytes are a certain strict
    # difference. JSON is not (key order, spacing, ignored fields): a cut JSON body, and
    # any cut body whose kept bytes agree, cannot be judged.
    exact = differs and mode not in ("json", "sniff-json")
    if exact and root_judge.kind == "ignore":
        return
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

    if exact:
        judgement = "strict"
        rule = f"{_strict_text(root_judge)}, truncated: the first {n} bytes differ"
    else:
        judgement = "unjudgeable"
        why = (
            "path rules cannot apply to a partial JSON body"
            if mode in ("json", "sniff-json")
            else "the cut part is unknown"
        )
        rule = f"body recorded truncated: not judgeable ({why})"
    out.append(_body_diff(show(a_raw, primary), show(b_raw, other), judgement, rule))


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
