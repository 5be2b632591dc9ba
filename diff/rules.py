"""Rules, compiled once: ``RuleBook.from_config(cfg.compare)`` then ``book.for_endpoint(ep)``.

A :class:`RuleSet` is what :func:`diff.compare.compare` applies to one exchange: the status
rule, the header lists, the body mode, and the body's path rules compiled into one
:class:`~diff.paths.PathMatcher` automaton whose states carry their judgement
(:class:`NodeRules`), so the walker learns what applies at a location with one dict lookup
per level.

How a location in a JSON body is judged:

Precedence (the same text is in ``config/graygate.example.yaml``):

- Every path rule (``strict``, ``ignore``, ``tolerance``) names a location and its whole
  subtree; a trailing ``.**`` adds nothing (``$.meta.**`` is ``$.meta``).
- A location is judged by the rule naming the NEAREST location on its way up from it:
  rules naming the location itself first, else those naming its parent, and so on; at
  ``$`` by ``default`` (``strict`` unless configured ``ignore``). A rule naming a deeper
  location is the more specific one for that subtree, whatever its kind.
- Where several rules name the same location, the most specific path wins (a literal step
  counts 2, ``*`` 1, ``**``/``..`` 0), then an endpoint's rule over a default one, then
  tolerance over strict over ignore (when in doubt, compare).
- So ``ignore: [$.meta.**]`` with ``strict: [$.meta.version]`` compares the version and
  everything under it (``$.meta.version.major`` too) and nothing else under ``meta``;
  ``default: ignore`` with ``strict: [$.status]`` compares only the status; ``strict:
  [$.items]`` with ``ignore: [$..request_id]`` ignores ``$.items[0].request_id``.
- ``tolerance`` bounds are inclusive and a number passes when it is within ``abs`` OR within
  ``rel`` (``|a - b| <= rel * max(|a|, |b|)``), when both are given. Anything that is not a
  number-against-number difference under a tolerance rule (a type change, a missing key) is
  judged strictly.
- ``arrays`` rules apply to the array at exactly that location: ``key`` pairs elements by
  that member (an inserted element is one ``extra``), ``unordered`` compares as multisets;
  ``key`` without ``unordered`` also reports one ``order`` difference when the paired
  elements come in a different order.

Merging an endpoint over the defaults: lists (``strict``, ``ignore``, header lists) add to
the defaults' lists; maps (``tolerance``, ``arrays``) are merged, the endpoint's entry
winning for the same path; scalars (``default``, ``status``, ``body``) override.

Headers: only the ``strict`` header names are compared (``*`` compares every header), and
the ``ignore`` list wins over it. With no ``headers`` configured in the defaults the lists
are :data:`DEFAULT_STRICT_HEADERS` and :data:`DEFAULT_IGNORED_HEADERS`; a list given in the
defaults replaces the built-in one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any, Literal

from config.schema import ArrayRule, CompareConfig, HeaderRules, RuleSpec, Tolerance, WriteRules
from diff.endpoints import EndpointMatcher, normalise_pattern
from diff.paths import DEEP, Location, MatchState, Path, PathMatcher, compile_path
from graygate.errors import ConfigError

__all__ = [
    "DEFAULT_IGNORED_HEADERS",
    "DEFAULT_STRICT_HEADERS",
    "ArraySpec",
    "Judge",
    "NodeRules",
    "RuleBook",
    "RuleSet",
]

log = logging.getLogger(__name__)

DEFAULT_STRICT_HEADERS: tuple[str, ...] = ("content-type",)
DEFAULT_IGNORED_HEADERS: tuple[str, ...] = (
    "date",
    "server",
    "x-request-id",
    "x-trace-id",
    "traceparent",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
)

JudgeKind = Literal["strict", "ignore", "tolerance"]
_KIND_RANK = {"ignore": 0, "strict": 1, "tolerance": 2}
# Slack for float rounding at a tolerance bound: 1.00 vs 1.01 is within abs=0.01.
_ROUNDING = 1e-9


@dataclass(frozen=True, slots=True)
class Judge:
    """How a location is judged; ``text`` is what a Difference's ``rule`` says."""

    kind: JudgeKind
    text: str
    abs: float | None = None
    rel: float | None = None

    @property
    def ignore(self) -> bool:
        return self.kind == "ignore"

    def within(self, a: float, b: float) -> bool:
        """Whether ``a`` and ``b`` are within this tolerance (inclusive; abs OR rel)."""
        delta = a - b if a >= b else b - a
        if self.abs is not None and delta <= self.abs * (1 + _ROUNDING) + 1e-15:
            return True
        if self.rel is not None:
            scale = max(a if a >= 0 else -a, b if b >= 0 else -b)
            if delta <= self.rel * scale * (1 + _ROUNDING):
                return True
        return False

    def within_decimal(self, a: Decimal, b: Decimal) -> bool:
        """:meth:`within` for numbers written as strings, compared exactly as decimals."""
        delta = abs(a - b)
        slack = Decimal(1 + _ROUNDING)
        if self.abs is not None and delta <= Decimal(self.abs) * slack:
            return True
        if self.rel is not None and delta <= Decimal(self.rel) * max(abs(a), abs(b)) * slack:
            return True
        return False


@dataclass(frozen=True, slots=True)
class ArraySpec:
    """An ``arrays`` rule: elements paired by ``key`` and/or compared as a multiset."""

    key: str | None
    unordered: bool
    text: str  # "array $.items key=sku"


@dataclass(frozen=True, slots=True)
class NodeRules:
    """What applies at one automaton state (stored as ``MatchState.info``).

    ``judge`` is the judge of the rules naming this location exactly (None: inherit the
    parent's). ``unignore`` is true when some strict or tolerance rule may name a location
    below, so an ignored subtree must still be entered. ``dead`` is true when no rule at
    all may name this location or one below.
    """

    judge: Judge | None
    array: ArraySpec | None
    unignore: bool
    dead: bool


@dataclass(frozen=True, slots=True)
class _Rule:
    path: Path
    judge: Judge
    rank: tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class _ArrayRuleC:
    path: Path
    spec: ArraySpec
    rank: tuple[int, int]


class RuleSet:
    """The compiled rules for one endpoint. Immutable; shared between threads."""

    def __init__(
        self,
        *,
        endpoint: str | None,
        default: Judge,
        rules: Iterable[_Rule],
        arrays: Iterable[_ArrayRuleC],
        status_strict: bool,
        strict_headers: tuple[str, ...],
        ignored_headers: frozenset[str],
        all_headers: bool,
        body: str,
        max_body_bytes: int | None = None,
    ) -> None:
        rules = tuple(rules)
        arrays = tuple(arrays)
        self._args: dict[str, Any] = {
            "endpoint": endpoint,
            "default": default,
            "rules": rules,
            "arrays": arrays,
            "status_strict": status_strict,
            "strict_headers": strict_headers,
            "ignored_headers": ignored_headers,
            "all_headers": all_headers,
            "body": body,
            "max_body_bytes": max_body_bytes,
        }
        self.endpoint = endpoint
        self.default = default
        self.status_strict = status_strict
        self.strict_headers = tuple(h for h in strict_headers if h not in ignored_headers)
        self.ignored_headers = ignored_headers
        self.all_headers = all_headers
        self.body = body
        # compare.max_body_bytes: a body larger than this is compared as bytes (sha256).
        self.max_body_bytes = max_body_bytes
        self._rules = tuple(rules)
        self._arrays = tuple(arrays)
        n_rules = len(self._rules)
        paths = [r.path for r in self._rules] + [a.path for a in self._arrays]
        self._n_rules = n_rules
        self.matcher = PathMatcher(paths, annotate=self._annotate)
        self.root: MatchState = self.matcher.root
        # No path rule at all and everything strict: the body is judged as one strict value.
        self.plain = not self._rules and not self._arrays and default.kind == "strict"

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        # Rebuilt on the other side (the automaton is rebuilt lazily): pickles for processes.
        return (_make_ruleset, (self._args,))

    def _annotate(self, state: MatchState) -> NodeRules:
        n = self._n_rules
        best: _Rule | None = None
        best_array: _ArrayRuleC | None = None
        for i in state.matched:
            if i < n:
                rule = self._rules[i]
                if best is None or rule.rank > best.rank:
                    best = rule
            else:
                arr = self._arrays[i - n]
                if best_array is None or arr.rank > best_array.rank:
                    best_array = arr
        unignore = any(i < n and self._rules[i].judge.kind != "ignore" for i in state.live)
        return NodeRules(
            judge=best.judge if best is not None else None,
            array=best_array.spec if best_array is not None else None,
            unignore=unignore,
            dead=not state.positions,
        )

    def judge_at(self, location: Location) -> Judge:
        """The judge of one location (for tests and for the rare slow paths)."""
        state = self.root
        judge: Judge = state.info.judge or self.default
        for part in location:
            state = state.step(part)
            if state.info.judge is not None:
                judge = state.info.judge
        return judge

    def describe(self) -> dict[str, object]:
        """A JSON-able summary of the rules, for the report."""
        return {
            "endpoint": self.endpoint,
            "default": self.default.kind,
            "rules": [r.judge.text for r in self._rules],
            "arrays": [a.spec.text for a in self._arrays],
            "status": "strict" if self.status_strict else "ignore",
            "headers": {
                "strict": ["*"] if self.all_headers else list(self.strict_headers),
                "ignore": sorted(self.ignored_headers),
            },
            "body": self.body,
        }

    def __repr__(self) -> str:
        return f"RuleSet(endpoint={self.endpoint!r}, rules={len(self._rules)})"


def _make_ruleset(args: dict[str, Any]) -> RuleSet:
    return RuleSet(**args)


def _tolerance_text(path: str, tol: Tolerance) -> str:
    parts = [f"tolerance {path}"]
    if tol.abs is not None:
        parts.append(f"abs={tol.abs:g}")
    if tol.rel is not None:
        parts.append(f"rel={tol.rel:g}")
    return " ".join(parts)


def _array_text(path: str, rule: ArrayRule) -> str:
    text = f"array {path}"
    if rule.key is not None:
        text += f" key={rule.key}"
    if rule.unordered:
        text += " unordered"
    return text


def _compile(key: str, text: str) -> Path:
    try:
        return compile_path(text)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None


def _subtree_root(path: Path) -> Path:
    """A judging rule names a location and its whole subtree, so a trailing ``.**`` adds
    nothing: ``$.meta.**`` is the rule ``$.meta``. Dropping it makes the precedence a
    matter of which rule names the nearer location (see the module docstring)."""
    steps = path.steps
    while steps and steps[-1][0] == DEEP:
        steps = steps[:-1]
    return path if steps == path.steps else Path(text=path.text, steps=steps)


def _compile_spec(
    prefix: str, spec: RuleSpec, source: int
) -> tuple[list[_Rule], dict[str, _ArrayRuleC]]:
    """One RuleSpec's path rules; ``source`` 0 for defaults, 1 for an endpoint."""
    rules: list[_Rule] = []
    kind: JudgeKind
    for kind in ("strict", "ignore"):
        for text in getattr(spec, kind):
            path = _subtree_root(_compile(f"{prefix}.{kind}", text))
            judge = Judge(kind=kind, text=f"{kind} {path.text}")
            rules.append(_Rule(path, judge, (path.specificity, source, _KIND_RANK[kind])))
    for text, tol in spec.tolerance.items():
        path = _subtree_root(_compile(f"{prefix}.tolerance", text))
        judge = Judge("tolerance", _tolerance_text(path.text, tol), tol.abs, tol.rel)
        rules.append(_Rule(path, judge, (path.specificity, source, _KIND_RANK["tolerance"])))
    arrays: dict[str, _ArrayRuleC] = {}
    for text, arr in spec.arrays.items():
        path = _compile(f"{prefix}.arrays", text)
        if arr.key is not None and not arr.key:
            raise ConfigError(f"{prefix}.arrays", f"array {text!r}: key must not be empty")
        arrays[path.text] = _ArrayRuleC(
            path,
            ArraySpec(arr.key, arr.unordered, _array_text(path.text, arr)),
            (path.specificity, source),
        )
    return rules, arrays


def _header_lists(
    defaults: HeaderRules | None, endpoint: HeaderRules | None
) -> tuple[tuple[str, ...], frozenset[str], bool]:
    strict = list(DEFAULT_STRICT_HEADERS)
    ignore = list(DEFAULT_IGNORED_HEADERS)
    if defaults is not None:
        if defaults.strict is not None:
            strict = list(defaults.strict)
        if defaults.ignore is not None:
            ignore = list(defaults.ignore)
    if endpoint is not None:
        strict += list(endpoint.strict or ())
        ignore += list(endpoint.ignore or ())
    lowered = [h.lower().strip() for h in strict]
    all_headers = "*" in lowered
    seen: dict[str, None] = dict.fromkeys(h for h in lowered if h != "*")
    return tuple(seen), frozenset(h.lower().strip() for h in ignore), all_headers


class RuleBook:
    """Every endpoint's rules, compiled once from ``compare`` config."""

    def __init__(
        self,
        defaults: RuleSet,
        endpoints: Mapping[str, RuleSet],
        patterns: tuple[str, ...],
        config: CompareConfig | None = None,
    ):
        self.config = config
        self.defaults = defaults
        self._endpoint_rules = dict(endpoints)  # pattern ("GET /api/orders/{id}") -> rules
        self.patterns = patterns
        self.matcher = EndpointMatcher(patterns)
        # (method or None for "*", template) in configured order, to resolve answers back.
        self._templates: tuple[tuple[str | None, str, str], ...] = tuple(
            (None if p.split(" ", 1)[0] == "*" else p.split(" ", 1)[0], p.split(" ", 1)[1], p)
            for p in patterns
        )
        self._lookup = lru_cache(maxsize=4096)(self._resolve)
        # The write checks' pseudo-endpoints ("WRITE stock_moves"), looked up by name.
        self._writes: dict[str, RuleSet] = {}

    @classmethod
    def from_config(cls, cfg: CompareConfig) -> RuleBook:
        """Compile ``cfg``; a bad path or pattern raises ConfigError naming its key."""
        d = cfg.defaults
        d_rules, d_arrays = _compile_spec("compare.defaults", d, 0)
        defaults = _build(None, d, None, d_rules, d_arrays, cfg.max_body_bytes)
        endpoints: dict[str, RuleSet] = {}
        patterns: list[str] = []
        for i, ep in enumerate(cfg.endpoints):
            prefix = f"compare.endpoints[{i}]"
            try:
                normalised = normalise_pattern(ep.match)
            except ValueError as exc:
                raise ConfigError(f"{prefix}.match", str(exc)) from None
            e_rules, e_arrays = _compile_spec(prefix, ep, 1)
            if normalised in endpoints:
                log.warning("%s.match: %s is configured twice; the first wins", prefix, ep.match)
                continue
            endpoints[normalised] = _build(
                normalised, d, ep, d_rules + e_rules, {**d_arrays, **e_arrays}, cfg.max_body_bytes
            )
            patterns.append(normalised)
        book = cls(defaults, endpoints, tuple(patterns), cfg)
        for i, w in enumerate(cfg.writes):
            book._writes[w.endpoint] = _write_ruleset(f"writes[{i}]", w, cfg.max_body_bytes)
        return book

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        if self.config is not None:
            return (RuleBook.from_config, (self.config,))
        return (RuleBook, (self.defaults, self._endpoint_rules, self.patterns))

    def for_endpoint(self, endpoint: str) -> RuleSet:
        """The rules for an endpoint as :class:`EndpointMatcher` names it (cached)."""
        return self._lookup(endpoint)

    def _resolve(self, endpoint: str) -> RuleSet:
        if endpoint in self._writes:
            return self._writes[endpoint]
        if not self._templates:
            return self.defaults
        method, _, path = endpoint.partition(" ")
        method = method.upper()
        for pat_method, template, pattern in self._templates:
            if template == path and (pat_method is None or pat_method == method or method == "*"):
                return self._endpoint_rules[pattern]
        return self.defaults


def _build(
    name: str | None,
    defaults: RuleSpec,
    endpoint: RuleSpec | None,
    rules: list[_Rule],
    arrays: dict[str, _ArrayRuleC],
    max_body_bytes: int | None = None,
) -> RuleSet:
    def pick(attr: str, fallback: str) -> str:
        if endpoint is not None and getattr(endpoint, attr) is not None:
            return str(getattr(endpoint, attr))
        value = getattr(defaults, attr)
        return fallback if value is None else str(value)

    default_kind = pick("default", "strict")
    # An endpoint's tolerance for a path replaces the defaults' for the same path.
    if endpoint is not None:
        overridden = {p.path.text for p in rules if p.rank[1] == 1 and p.judge.kind == "tolerance"}
        rules = [
            r
            for r in rules
            if not (r.rank[1] == 0 and r.judge.kind == "tolerance" and r.path.text in overridden)
        ]
    strict_h, ignored_h, all_h = _header_lists(
        defaults.headers, endpoint.headers if endpoint is not None else None
    )
    return RuleSet(
        endpoint=name,
        default=Judge(default_kind, f"{default_kind} (default)"),  # type: ignore[arg-type]
        rules=rules,
        arrays=arrays.values(),
        status_strict=pick("status", "strict") == "strict",
        strict_headers=strict_h,
        ignored_headers=ignored_h,
        all_headers=all_h,
        body=pick("body", "auto"),
        max_body_bytes=max_body_bytes,
    )


def _write_ruleset(prefix: str, w: WriteRules, max_body_bytes: int | None) -> RuleSet:
    """A write check's rules: its rows (a JSON array of objects) strict by default, paired
    by ``key`` in any order (else by position), compared as JSON whatever the content
    type; no status or header is compared (both sides' are the same: the rows are all)."""
    spec = RuleSpec(
        default="strict",
        strict=w.strict,
        ignore=w.ignore,
        tolerance=w.tolerance,
        arrays={"$": ArrayRule(key=w.key, unordered=True)} if w.key else {},
        status="ignore",
        body="json",
    )
    rules, arrays = _compile_spec(prefix, spec, 1)
    return _build(w.endpoint, RuleSpec(), spec, rules, arrays, max_body_bytes)
