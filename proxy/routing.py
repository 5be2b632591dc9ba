"""Routing (request path step 3): who serves a request, and whether it is mirrored.

Pure: plain values in, a decision out. By default the primary serves and the canary gets the
mirror. A ``gray.serve_canary`` rule that matches (every condition it names holds) makes the
canary serve and the primary get the mirror.

Who chooses: never the client. A percentage without ``sticky`` and the mirror's ``sample``
are decided per request from graygate's own randomness (``random.SystemRandom``, the
operating system's source), not from the trace id: a client chooses its ``X-Trace-ID`` and
``traceparent``, and a hash of them, keyed or not, would let it pick its side (or dodge the
mirror) by reusing an id it found by trial. The two draws are independent.

With ``sticky`` (a header) or ``sticky_cookie`` the user's value is hashed, which is the
point of stickiness (one user, one side): a stable hash (BLAKE2b), never Python's salted
``hash()``, so every process, on every host, across restarts, puts the same user in the
same bucket.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from hashlib import blake2b
from typing import Final

from config.schema import GrayConfig, MirrorConfig, ServeRule
from graygate.vocabulary import Role, SkipReason

__all__ = [
    "BUCKETS",
    "CANARY",
    "PRIMARY",
    "SKIP_BODY_TOO_LARGE",
    "SKIP_DISABLED",
    "SKIP_METHOD",
    "SKIP_SAMPLED_OUT",
    "SKIP_SATURATED",
    "Router",
    "parse_cookies",
    "random_bucket",
    "stable_bucket",
]

logger = logging.getLogger(__name__)

PRIMARY: Final = Role.PRIMARY
CANARY: Final = Role.CANARY

# Why an exchange got no mirror (the values of exchanges.mirror_skipped).
SKIP_DISABLED: Final = SkipReason.DISABLED
SKIP_METHOD: Final = SkipReason.METHOD
SKIP_SAMPLED_OUT: Final = SkipReason.SAMPLED_OUT
SKIP_BODY_TOO_LARGE: Final = SkipReason.BODY_TOO_LARGE
SKIP_SATURATED: Final = SkipReason.SATURATED

BUCKETS: Final = 10_000
_ROUTE_SALT = b"graygate.route"

# The operating system's randomness: not seedable, not predictable from earlier draws.
_draw = random.SystemRandom().randrange


def random_bucket() -> int:
    """A fresh bucket in ``0..9999`` from graygate's own randomness (per request)."""
    return _draw(BUCKETS)


def stable_bucket(value: str, salt: bytes = _ROUTE_SALT) -> int:
    """``value``'s bucket in ``0..9999``: the same everywhere, always."""
    digest = blake2b(value.encode("utf-8", "surrogateescape"), digest_size=8, person=salt).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def parse_cookies(header: str | None) -> dict[str, str]:
    """The ``name=value`` pairs of a ``Cookie`` header (first occurrence of a name wins)."""
    out: dict[str, str] = {}
    if not header:
        return out
    for part in header.split(";"):
        name, sep, value = part.partition("=")
        if not sep:
            continue
        name = name.strip()
        if not name or name in out:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            value = value[1:-1]
        out[name] = value
    return out


class _Rule:
    __slots__ = (
        "cookie",
        "cookie_equals",
        "equals",
        "header",
        "label",
        "sticky",
        "sticky_cookie",
        "threshold",
    )

    def __init__(self, rule: ServeRule) -> None:
        self.label = rule.label
        self.header = rule.header
        self.equals = rule.equals
        self.cookie = rule.cookie
        self.cookie_equals = rule.cookie_equals
        self.threshold = None if rule.percent is None else rule.percent * (BUCKETS / 100)
        self.sticky = rule.sticky
        self.sticky_cookie = rule.sticky_cookie

    @property
    def needs_cookies(self) -> bool:
        return self.cookie is not None or self.sticky_cookie is not None

    def matches(
        self,
        headers: Mapping[str, str],
        cookies: Mapping[str, str],
        label: str | None,
    ) -> bool:
        if self.label is not None and label != self.label:
            return False
        if self.header is not None:
            value = headers.get(self.header)
            if value is None or (self.equals is not None and value != self.equals):
                return False
        if self.cookie is not None:
            value = cookies.get(self.cookie)
            if value is None or (self.cookie_equals is not None and value != self.cookie_equals):
                return False
        if self.threshold is not None:
            if self.sticky is not None or self.sticky_cookie is not None:
                key = (
                    headers.get(self.sticky)
                    if self.sticky is not None
                    else cookies.get(self.sticky_cookie or "")
                )
                if not key:
                    return False  # no user to be sticky for: the rule does not apply
                bucket = stable_bucket(key)
            else:
                bucket = random_bucket()  # never the client's trace id
            if bucket >= self.threshold:
                return False
        return True


class Router:
    """The routing decisions of one configuration."""

    __slots__ = ("_labels", "_methods", "_mirror_enabled", "_needs_cookies", "_rules", "_sample")

    def __init__(self, gray: GrayConfig, mirror: MirrorConfig) -> None:
        self._rules = tuple(_Rule(r) for r in gray.serve_canary)
        self._needs_cookies = any(r.needs_cookies for r in self._rules)
        self._labels: dict[str, str] = {
            PRIMARY: gray.labels.get(PRIMARY.value, PRIMARY),
            CANARY: gray.labels.get(CANARY.value, CANARY),
        }
        self._mirror_enabled = mirror.enabled
        self._methods = mirror.mirrored_methods
        self._sample = mirror.sample * BUCKETS

    def serving_side(
        self, headers: Mapping[str, str], label: str | None, trace_id: str | None = None
    ) -> str:
        """``"canary"`` when a ``serve_canary`` rule matches, else ``"primary"``.

        ``trace_id`` is accepted for compatibility and not used: a percentage without
        ``sticky`` is drawn per request (see the module docstring)."""
        if not self._rules:
            return PRIMARY
        cookies: Mapping[str, str] = (
            parse_cookies(headers.get("Cookie")) if self._needs_cookies else {}
        )
        for rule in self._rules:
            if rule.matches(headers, cookies, label):
                return CANARY
        return PRIMARY

    def label_for(self, label: str | None, served_by: str) -> str:
        """The request's gray label: the one it came with, else the serving side's."""
        return label if label is not None else self._labels[served_by]

    def mirror_skip(self, method: str, trace_id: str | None = None) -> str | None:
        """Why the request is not mirrored (before its body is read), or ``None``.

        Sampling is drawn per request; ``trace_id`` is accepted for compatibility and not
        used (a client must not choose whether it is mirrored)."""
        if not self._mirror_enabled:
            return SKIP_DISABLED
        if method not in self._methods:
            return SKIP_METHOD
        if self._sample < BUCKETS and random_bucket() >= self._sample:
            return SKIP_SAMPLED_OUT
        return None
