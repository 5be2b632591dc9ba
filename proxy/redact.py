"""Redaction before storage: secrets never reach PostgreSQL.

Pure. Header values of ``Authorization``, ``Proxy-Authorization``, ``Cookie``,
``Set-Cookie``, ``X-Api-Key`` and of every header in ``redact.headers`` are replaced with
the placeholder; so are the JSON body fields at the ``redact.json_fields`` paths.

Paths are the configuration's JSONPath subset, compiled and matched by ``diff.paths`` (the
same code the diff uses): ``$.a.b``, ``$.items[*].card``, ``$.items[0].card``,
``$..password`` (any depth), ``$.a.*`` (one level), ``$.a.**`` (``a`` and all below).

A body that is not JSON is left as it is, except that a body *declared* JSON that does not
parse (cut at the storage bound, say) still gets the values of the paths' final field names
replaced wherever they appear: over-redacting is the safe side of that trade.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

import orjson

from config.schema import RedactConfig
from diff.paths import KEY, MatchState, PathMatcher, compile_path

__all__ = ["ALWAYS_REDACTED", "Redactor"]

logger = logging.getLogger(__name__)

ALWAYS_REDACTED = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"}
)


def _redact(node: Any, state: MatchState, placeholder: str) -> int:
    """Replace in place what the matcher selects below ``node``; how many were replaced."""
    count = 0
    if isinstance(node, dict):
        for key, value in node.items():
            nxt = state.key(key)
            if nxt.matched:
                node[key] = placeholder
                count += 1
            elif nxt.live and isinstance(value, (dict, list)):
                count += _redact(value, nxt, placeholder)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            nxt = state.index(i)
            if nxt.matched:
                node[i] = placeholder
                count += 1
            elif nxt.live and isinstance(value, (dict, list)):
                count += _redact(value, nxt, placeholder)
    return count


class Redactor:
    """The redaction of one configuration."""

    __slots__ = ("_fallback", "_headers", "_matcher", "_placeholder", "_placeholder_json")

    def __init__(self, cfg: RedactConfig) -> None:
        self._headers = ALWAYS_REDACTED | frozenset(h.lower() for h in cfg.headers)
        self._placeholder = cfg.placeholder
        self._placeholder_json = orjson.dumps(cfg.placeholder)
        paths = [compile_path(p) for p in cfg.json_fields]
        self._matcher = PathMatcher(paths) if paths else None
        names = sorted(str(p.steps[-1][1]) for p in paths if p.steps and p.steps[-1][0] == KEY)
        self._fallback = (
            re.compile(
                rb'("(?:'
                + b"|".join(re.escape(n.encode()) for n in names)
                + rb')"\s*:\s*)'
                + rb'(?:"(?:[^"\\]|\\.)*(?:"|$)|-?[0-9][0-9.eE+-]*|true|false|null)'
            )
            if names
            else None
        )

    def headers(
        self, items: Iterable[tuple[str, str]], drop: frozenset[str] = frozenset()
    ) -> dict[str, str]:
        """Lower-case names, repeated headers joined with ``", "``, secrets replaced; the
        (lower-case) names in ``drop`` left out."""
        out: dict[str, str] = {}
        sensitive = self._headers
        placeholder = self._placeholder
        for name, value in items:
            key = name.lower()
            if key in drop:
                continue
            if key in sensitive:
                value = placeholder
            prev = out.get(key)
            out[key] = value if prev is None else f"{prev}, {value}"
        return out

    def body(self, body: bytes | None, content_type: str | None) -> bytes | None:
        """``body`` with the configured JSON fields replaced; non-JSON bodies unchanged."""
        matcher = self._matcher
        if not body or matcher is None:
            return body
        if content_type is not None:
            if "json" not in content_type.lower():
                return body
        else:
            head = body[:64].lstrip()
            if not head.startswith((b"{", b"[")):
                return body
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return self._fallback_redact(body)
        root = matcher.root
        if root.matched:  # "$": the whole body
            return self._placeholder_json
        if not root.live or not isinstance(doc, (dict, list)):
            return body
        count = _redact(doc, root, self._placeholder)
        return orjson.dumps(doc) if count else body

    def _fallback_redact(self, body: bytes) -> bytes:
        if self._fallback is None:
            return body
        return self._fallback.sub(lambda m: m.group(1) + self._placeholder_json, body)
