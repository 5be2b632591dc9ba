"""Redaction before storage: secrets never reach PostgreSQL.

Pure. One set of field rules (``redact.json_fields``, the configuration's JSONPath subset,
compiled and matched by ``diff.paths``: ``$.a.b``, ``$.items[*].card``, ``$..password``,
``$.a.*``, ``$.a.**``) applies wherever a named value is stored:

- JSON bodies, *whatever their declared type*: a body declared JSON, or any body that
  starts with ``{`` or ``[`` (a JSON body sent as ``text/plain``). A JSON-looking body that
  does not parse (cut at the storage bound, say) still gets the values of the paths' final
  field names replaced wherever they appear: over-redacting is the safe side of that trade.
- Form bodies (``application/x-www-form-urlencoded``, or any body that is nothing but
  ``name=value&...``) and multipart form fields (``multipart/form-data``, by the part's
  ``name``): a field ``password`` is the location ``$.password``, ``card[number]`` and
  ``card.number`` are ``$.card.number``, ``items[0][card]`` is ``$.items[0].card``.
- Query strings (:meth:`Redactor.query`), the same way as form bodies.

Form fields and query parameters *named like a secret* (``access_token``, ``password``,
``client_secret``, ``api_key``, ``X-Amz-Signature``...; ``config.censor``) are always
replaced, configured or not: they are credentials wherever they appear in a URL.

Header values of ``Authorization``, ``Proxy-Authorization``, ``Cookie``, ``Set-Cookie``,
``X-Api-Key``, of every header named like a secret (``X-Auth-Token``) and of every header
in ``redact.headers`` are replaced with the placeholder. Stored headers are bounded: a
value beyond ``MAX_HEADER_VALUE`` characters is cut, and headers beyond
``redact.max_header_bytes`` in all are left out (their count is stored under
``x-graygate-headers-dropped``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any, Final
from urllib.parse import quote_plus, unquote_plus

import orjson

from config.censor import named_like_a_secret
from config.schema import RedactConfig
from diff.paths import KEY, MatchState, PathMatcher, compile_path

__all__ = [
    "ALWAYS_REDACTED",
    "DROPPED_HEADERS",
    "MAX_HEADER_VALUE",
    "Redactor",
    "form_location",
    "storable_text",
]

logger = logging.getLogger(__name__)

ALWAYS_REDACTED = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"}
)
MAX_HEADER_VALUE: Final = 8192  # characters of one stored header value
DROPPED_HEADERS: Final = "x-graygate-headers-dropped"
_CUT_MARK: Final = "...[cut]"
_secret_name = lru_cache(maxsize=4096)(named_like_a_secret)
_NAMES_CACHED: Final = 1024  # header names (as sent) whose lower case and secrecy are kept

# A whole body that is nothing but name=value pairs (no spaces, no newlines).
_FORM_LIKE = re.compile(rb"[^=&\s]+=[^&\s]*(?:&[^=&\s]*=[^&\s]*|&)*")
_FORM_PART = re.compile(r"\[([^\]]*)\]")
_DISPOSITION_NAME = re.compile(rb'(?i)content-disposition:[^\r\n]*?\bname="([^"]*)"')
_PART_TYPE = re.compile(rb"(?i)content-type:\s*([^\r\n;]+)")
_BOUNDARY = re.compile(r'(?i)boundary=(?:"([^"]+)"|([^;\s]+))')


def storable_text(value: str) -> str:
    """``value`` as it can be stored (UTF-8 text): bytes outside UTF-8, which travel as
    surrogate escapes, written ``\\xNN`` (``caf\\xe9``)."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return value


def form_location(name: str) -> list[str | int]:
    """A form field's or query parameter's name as a location: ``card[number]`` and
    ``card.number`` are ``["card", "number"]``, ``items[0][sku]`` is ``["items", 0, "sku"]``,
    ``tags[]`` is ``["tags"]``."""
    head, bracket, rest = name.partition("[")
    steps: list[str | int] = []
    steps.extend(part for part in head.split(".") if part)
    if bracket:
        for part in _FORM_PART.findall("[" + rest):
            if part == "":
                continue
            steps.append(int(part) if part.isdigit() else part)
    return steps or [name]


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

    __slots__ = (
        "_fallback",
        "_header_names",
        "_headers",
        "_matcher",
        "_max_header_bytes",
        "_placeholder",
        "_placeholder_form",
        "_placeholder_json",
    )

    def __init__(self, cfg: RedactConfig) -> None:
        self._headers = ALWAYS_REDACTED | frozenset(h.lower() for h in cfg.headers)
        # A header name as sent -> (its lower case, whether its value is redacted): the
        # same few names come with every exchange.
        self._header_names: dict[str, tuple[str, bool]] = {}
        self._placeholder = cfg.placeholder
        self._placeholder_json = orjson.dumps(cfg.placeholder)
        self._placeholder_form = quote_plus(cfg.placeholder)
        self._max_header_bytes = cfg.max_header_bytes
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

    # --- headers -------------------------------------------------------------------------

    def headers(
        self, items: Iterable[tuple[str, str]], drop: frozenset[str] = frozenset()
    ) -> dict[str, str]:
        """Lower-case names, repeated headers joined with ``", "``, secrets replaced; the
        (lower-case) names in ``drop`` left out; bounded (see the module docstring); names
        and values storable text (``storable_text``)."""
        out: dict[str, str] = {}
        names = self._header_names
        placeholder = self._placeholder
        budget = self._max_header_bytes
        dropped = 0
        for name, value in items:
            known = names.get(name)
            if known is None:
                known = self._header_name(name)
            key, secret = known
            if key in drop:
                continue
            if secret:
                value = placeholder
            else:
                if not value.isascii():
                    value = storable_text(value)
                if len(value) > MAX_HEADER_VALUE:
                    value = value[: MAX_HEADER_VALUE - len(_CUT_MARK)] + _CUT_MARK
            prev = out.get(key)
            cost = len(value) + (len(key) if prev is None else 2)
            if cost > budget:
                dropped += 1
                continue
            budget -= cost
            out[key] = value if prev is None else f"{prev}, {value}"
        if dropped:
            out[DROPPED_HEADERS] = str(dropped)
        return out

    def _header_name(self, name: str) -> tuple[str, bool]:
        key = storable_text(name).lower()
        known = (key, key in self._headers or _secret_name(key))
        names = self._header_names
        if len(names) >= _NAMES_CACHED:  # a client inventing names: start over
            names.clear()
        names[name] = known
        return known

    # --- names: form fields, query parameters ----------------------------------------------

    def _name_redacted(self, name: str) -> bool:
        if _secret_name(name):
            return True
        matcher = self._matcher
        if matcher is None:
            return False
        state = matcher.root
        if state.matched:
            return True
        for step in form_location(name):
            state = state.index(step) if isinstance(step, int) else state.key(step)
            if state.matched:
                return True
            if not state.live:
                return False
        return False

    def query(self, query: str) -> str:
        """A raw query string (no ``?``) with the values of redacted parameters replaced;
        the rest kept byte for byte."""
        if not query or "=" not in query:
            return query
        return self._form(query)

    def _form(self, text: str) -> str:
        pairs = text.split("&")
        changed = False
        for i, pair in enumerate(pairs):
            name, sep, _ = pair.partition("=")
            if not sep:
                continue
            try:
                plain = unquote_plus(name, errors="strict")
            except UnicodeDecodeError:
                plain = unquote_plus(name)
            if self._name_redacted(plain):
                pairs[i] = f"{name}={self._placeholder_form}"
                changed = True
        return "&".join(pairs) if changed else text

    def _form_body(self, body: bytes) -> bytes:
        text = body.decode("latin-1")  # byte for byte; names are matched after unquoting
        out = self._form(text)
        return body if out is text else out.encode("latin-1")

    def _multipart(self, body: bytes, content_type: str) -> bytes:
        m = _BOUNDARY.search(content_type)
        if m is None:
            return body
        delimiter = b"--" + (m.group(1) or m.group(2)).encode("latin-1")
        parts = body.split(delimiter)
        changed = False
        for i in range(1, len(parts)):
            part = parts[i]
            head, sep, content = part.partition(b"\r\n\r\n")
            if not sep:
                continue
            tail = b"\r\n" if content.endswith(b"\r\n") else b""
            content = content[: len(content) - len(tail)]
            name = _DISPOSITION_NAME.search(head)
            new = content
            if name is not None and self._name_redacted(name.group(1).decode("utf-8", "replace")):
                new = self._placeholder.encode()
            else:
                ptype = _PART_TYPE.search(head)
                new = (
                    self._body(content, ptype.group(1).decode("latin-1") if ptype else None)
                    or content
                )
            if new is not content:
                parts[i] = head + sep + new + tail
                changed = True
        return delimiter.join(parts) if changed else body

    # --- bodies -----------------------------------------------------------------------------

    def body(self, body: bytes | None, content_type: str | None) -> bytes | None:
        """``body`` with the redacted fields replaced (JSON, form, multipart; see the module
        docstring); other bodies unchanged, and an unchanged body is the same object."""
        if not body:
            return body
        return self._body(body, content_type)

    def _body(self, body: bytes, content_type: str | None) -> bytes:
        ctype = (content_type or "").lower()
        if ctype.startswith("multipart/"):
            return self._multipart(body, content_type or "")
        head = body[:64].lstrip(b"\xef\xbb\xbf \t\r\n")
        if "json" in ctype or head.startswith((b"{", b"[")):
            return self._json(body)
        if "x-www-form-urlencoded" in ctype or (
            (ctype.startswith(("text/plain", "application/octet-stream")) or not ctype)
            and _FORM_LIKE.fullmatch(body)
        ):
            return self._form_body(body)
        return body

    def _json(self, body: bytes) -> bytes:
        matcher = self._matcher
        if matcher is None:
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
