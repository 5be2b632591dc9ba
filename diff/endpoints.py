"""Which endpoint a request belongs to: ``METHOD /path/{template}``.

:class:`EndpointMatcher` is called on the proxy's hot path for every request, so patterns
are compiled once (grouped by segment count) and answers are memoised in a bounded LRU.

1. The first configured pattern that matches wins. ``{param}`` stands for exactly one
   non-empty segment; method ``*`` matches any method, and the request's own method takes
   its place in the answer (``* /api/orders/{id}`` gives ``GET /api/orders/{id}`` for a GET),
   so methods are still reported apart. :meth:`diff.rules.RuleBook.for_endpoint` resolves
   such an answer back to the pattern's rules.
2. Otherwise the path is normalised: id-like segments become ``{id}``, so that the report
   never has one row per order id. Id-like is:

   - integers (``42``, ``-7``) and dotted numbers (``3.14``, ``10.0.0.1``);
   - UUIDs (any case, with dashes);
   - hex of 8+ characters with at least one digit (``5f2b9c1e``, a Mongo ObjectId, a sha);
   - prefixed numbers (``ORD-1001``, ``user_42``, ``ord10012`` with 4+ digits);
   - long opaque tokens: 16+ characters of base64/base64url alphabet with at least one
     digit and either 2+ digits or both cases (``dXNlcjoxMjM0NTY3OA``, ``a8Fk29sLq0ZpX7wB``).

   Words, versions (``v2``), ``sha256`` and dashed slugs with one digit stay as they are.

The query string is dropped, a trailing slash is not significant, empty segments collapse.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import lru_cache

__all__ = ["EndpointMatcher", "is_id_segment", "normalise_path", "normalise_pattern"]

_CACHE_SIZE = 8192

_ID_RE = re.compile(
    r"""
    -?\d+(?:\.\d+)*                                             # 42, -7, 3.14, 10.0.0.1
    | [0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}  # UUID
    | (?=[a-fA-F]*\d)[0-9a-fA-F]{8,}                            # hex with a digit
    | [A-Za-z]+[-_:]\d{2,}                                      # ORD-1001, user_42
    | [A-Za-z]{1,8}\d{4,}                                       # ord10012
    """,
    re.VERBOSE,
)
_TOKEN_RE = re.compile(r"[A-Za-z0-9_\-=+~.]{16,}")


def is_id_segment(segment: str) -> bool:
    """Whether one path segment looks like an identifier rather than a route word."""
    if segment.isalpha():
        return False  # every id-like form has a digit
    if segment.isdigit():
        return True
    if _ID_RE.fullmatch(segment):
        return True
    if len(segment) >= 16 and _TOKEN_RE.fullmatch(segment):
        digits = sum(ch.isdigit() for ch in segment)
        if digits == 0:
            return False
        if digits >= 2:
            return True
        return any(ch.isupper() for ch in segment) and any(ch.islower() for ch in segment)
    return False


def _segments(path: str) -> list[str]:
    path = path.split("?", 1)[0].split("#", 1)[0]
    return [seg for seg in path.split("/") if seg]


def normalise_path(path: str) -> str:
    """``/api/orders/1042/items/`` -> ``/api/orders/{id}/items``."""
    segs = _segments(path)
    return "/" + "/".join("{id}" if is_id_segment(seg) else seg for seg in segs)


_PARAM_RE = re.compile(r"\{[A-Za-z_][A-Za-z0-9_\-]*\}\Z")


class _Pattern:
    __slots__ = ("literals", "method", "template")

    def __init__(self, method: str | None, literals: tuple[str | None, ...], template: str):
        self.method = method  # None: any
        self.literals = literals  # None at a {param} segment
        self.template = template  # "/api/orders/{id}"


def _compile(pattern: str) -> _Pattern:
    method, _, path = pattern.strip().partition(" ")
    path = path.strip()
    if not method or not path.startswith("/"):
        raise ValueError(f"pattern {pattern!r}: expected 'METHOD /path/{{param}}'")
    literals: list[str | None] = []
    for seg in _segments(path):
        if "{" in seg or "}" in seg:
            if not _PARAM_RE.match(seg):
                raise ValueError(
                    f"pattern {pattern!r}: segment {seg!r} must be a whole {{name}} or a literal"
                )
            literals.append(None)
        else:
            literals.append(seg)
    template = "/" + "/".join(
        "{" + seg[1:-1] + "}" if lit is None else lit
        for seg, lit in zip(_segments(path), literals, strict=True)
    )
    method = method.upper()
    return _Pattern(None if method == "*" else method, tuple(literals), template)


def normalise_pattern(pattern: str) -> str:
    """Validate a ``METHOD /path/{param}`` pattern and give its canonical form
    (method upper-cased, empty segments and a trailing slash dropped); ValueError if bad."""
    pat = _compile(pattern)
    return f"{pat.method or '*'} {pat.template}"


class EndpointMatcher:
    """``matcher.endpoint("GET", "/api/orders/1042")`` -> ``"GET /api/orders/{id}"``."""

    def __init__(self, patterns: Sequence[str] = ()) -> None:
        """Compile ``patterns`` (``METHOD /path/{param}``); ``ValueError`` names a bad one."""
        self.patterns: tuple[str, ...] = tuple(patterns)
        compiled = [_compile(p) for p in self.patterns]
        by_len: dict[int, list[_Pattern]] = {}
        for pat in compiled:
            by_len.setdefault(len(pat.literals), []).append(pat)
        self._by_len = {k: tuple(v) for k, v in by_len.items()}
        self._cached: Callable[[str, str], str] = lru_cache(maxsize=_CACHE_SIZE)(self._resolve)

    def __reduce__(self) -> tuple[type[EndpointMatcher], tuple[tuple[str, ...]]]:
        return (EndpointMatcher, (self.patterns,))  # the cache does not travel

    def endpoint(self, method: str, path: str) -> str:
        """The endpoint of a request: a configured pattern, else the normalised path."""
        return self._cached(method, path)

    def match(self, method: str, path: str) -> str | None:
        """The configured pattern (as written, normalised) that matches, or None."""
        pat = self._find(method.upper(), _segments(path))
        if pat is None:
            return None
        return f"{pat.method or '*'} {pat.template}"

    def _find(self, method: str, segs: list[str]) -> _Pattern | None:
        for pat in self._by_len.get(len(segs), ()):
            if pat.method is not None and pat.method != method:
                continue
            for seg, lit in zip(segs, pat.literals, strict=True):
                if lit is not None and lit != seg:
                    break
            else:
                return pat
        return None

    def _resolve(self, method: str, path: str) -> str:
        method = method.upper()
        segs = _segments(path)
        if self._by_len:
            pat = self._find(method, segs)
            if pat is not None:
                return f"{method} {pat.template}"
        return method + " /" + "/".join("{id}" if is_id_segment(s) else s for s in segs)

    def cache_clear(self) -> None:
        self._cached.cache_clear()  # type: ignore[attr-defined]
