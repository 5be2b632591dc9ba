"""The configured endpoint template a proxied request belongs to, as the request path's
metrics and spans name it.

The record's endpoint (``diff.endpoints.EndpointMatcher.endpoint``) falls back to the
normalised path, which a client controls: fine for a stored row, not for a Prometheus label
or a span's ``http.route``, whose values must be few. Here only the configured
``compare.endpoints`` patterns count:

- a request a pattern matches gets its template: ``Route.endpoint`` is the record's
  endpoint (``GET /api/orders/{id}``; a ``*`` pattern takes the request's method, as the
  record does, for a known HTTP method only) and ``Route.template`` the path template
  (``/api/orders/{id}``, the span's ``http.route``);
- at most ``metrics.max_endpoints`` distinct ``endpoint`` values per process, first come:
  a request of a further one is ``other`` for the metrics (its template still goes to the
  span: the configuration bounds those);
- a request no pattern matches is ``other``, with no template.

A raw path is never a value of either.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import lru_cache
from typing import Final

from config.schema import KNOWN_METHODS
from diff.endpoints import EndpointMatcher

__all__ = ["OTHER", "UNMATCHED", "Route", "RouteMatcher"]

logger = logging.getLogger(__name__)

OTHER: Final = "other"
_CACHE_SIZE: Final = 8192


class Route:
    """``endpoint``: the metrics' label value (a template, or ``other``); ``template``: the
    matched path template, or None."""

    __slots__ = ("endpoint", "template")

    def __init__(self, endpoint: str, template: str | None) -> None:
        self.endpoint = endpoint
        self.template = template

    def __repr__(self) -> str:
        return f"Route({self.endpoint!r}, {self.template!r})"


UNMATCHED: Final = Route(OTHER, None)


class RouteMatcher:
    """``RouteMatcher(matcher, max_endpoints).route("GET", "/api/orders/7")`` ->
    ``Route("GET /api/orders/{id}", "/api/orders/{id}")``."""

    def __init__(self, matcher: EndpointMatcher, max_endpoints: int) -> None:
        if max_endpoints < 1:
            raise ValueError(f"max_endpoints must be at least 1, not {max_endpoints}")
        self._matcher = matcher
        self.max_endpoints = max_endpoints
        self._labelled: set[str] = set()  # endpoint values given out, at most max_endpoints
        self._overflowed = False
        self._cached: Callable[[str, str], Route] = lru_cache(maxsize=_CACHE_SIZE)(self._resolve)

    @property
    def labelled(self) -> frozenset[str]:
        """The endpoint values given out so far (``other`` aside)."""
        return frozenset(self._labelled)

    def route(self, method: str, path: str) -> Route:
        return self._cached(method, path)

    def _resolve(self, method: str, path: str) -> Route:
        if not self._matcher.patterns:
            return UNMATCHED
        pattern = self._matcher.match(method, path)
        if pattern is None:
            return UNMATCHED
        pattern_method, _, template = pattern.partition(" ")
        if pattern_method == "*":
            method = method.upper()
            if method not in KNOWN_METHODS:
                return Route(OTHER, template)  # a client's made-up method is no label
            endpoint = f"{method} {template}"
        else:
            endpoint = pattern
        labelled = self._labelled
        if endpoint not in labelled:
            if len(labelled) >= self.max_endpoints:
                if not self._overflowed:
                    self._overflowed = True
                    logger.warning(
                        "%s and further endpoint templates are counted under endpoint=%r: "
                        "%d have a series of their own already (metrics.max_endpoints)",
                        endpoint,
                        OTHER,
                        self.max_endpoints,
                    )
                return Route(OTHER, template)
            labelled.add(endpoint)
        return Route(endpoint, template)
