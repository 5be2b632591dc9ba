"""The configured upstreams and their connection pools, owned by the app.

- One :class:`Upstream` per configured role (primary, canary, and the secondary when
  there is one): where it is, the ``Host`` it is sent, its serving and mirroring timeouts,
  and its ``proxy.upstream.Pool`` (keep-alive, ``upstreams.max_connections``).
- :func:`upstreams_ctx` makes them on startup under ``UPSTREAMS_KEY`` and closes the
  pools on cleanup. A pool never decompresses (the client gets the upstream's exact
  bytes), never follows redirects and keeps no cookies (one user's cookies must not reach
  another).
- Each :class:`Upstream` carries the ``proxy.ejection.Ejection`` of its mirrors
  (``mirror.eject``): a mirror target that keeps breaking its answers is skipped a while.
- An upstream's base URL may have a path: the request target is joined under it
  (:meth:`Upstream.target`), and a ``Location`` naming it (:attr:`Upstream.origin`) is
  rewritten to the proxied address.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiohttp import web
from yarl import URL

from config.schema import MirrorConfig, UpstreamsConfig
from graygate.vocabulary import Role
from proxy.ejection import DiscardGate, Ejection
from proxy.upstream import Pool

__all__ = ["UPSTREAMS_KEY", "Upstream", "upstreams_ctx"]


class Upstream:
    """One configured upstream: its role, where it is, its pool and timeouts (seconds)."""

    __slots__ = (
        "_prefix",
        "base",
        "discard_gate",
        "ejection",
        "host_header",
        "mirror_timeout",
        "origin",
        "pool",
        "role",
        "serve_timeout",
    )

    def __init__(
        self,
        role: str,
        base: str,
        pool: Pool,
        serve_timeout: float,
        mirror_timeout: float,
        host_header: str | None = None,
        ejection: Ejection | None = None,
        discard_gate: DiscardGate | None = None,
    ) -> None:
        self.role = role
        # Mirrors to it skipped after broken answers (mirror.eject); serving never is.
        self.ejection = ejection if ejection is not None else Ejection(role, 0, 1.0, 1.0)
        # Whether a mirror's answer is read on past the record bound to be timed.
        self.discard_gate = discard_gate if discard_gate is not None else DiscardGate(0, 1.0, 1.0)
        self.base = base
        self.pool = pool
        self.serve_timeout = serve_timeout
        self.mirror_timeout = mirror_timeout
        # The Host sent upstream: None keeps the client's; "upstream" sends the upstream's
        # own authority; anything else is sent as given.
        self.host_header = host_header
        url = URL(base)
        self._prefix = url.raw_path.rstrip("/")
        # What a Location naming this upstream starts with (lowercased).
        self.origin = f"{url.scheme}://{url.raw_authority}{self._prefix}".lower()

    @property
    def prefixed(self) -> bool:
        """The upstream's base URL has a path that requests are joined under."""
        return bool(self._prefix)

    def host(self, client_host: str | None) -> str | None:
        """The ``Host`` header for this upstream (None: the upstream's authority)."""
        header = self.host_header
        if header is None:
            return client_host
        return None if header == "upstream" else header

    def target(self, path: str, query: str) -> str:
        """The request target upstream: this upstream's base path, the request's path and
        query."""
        if self._prefix and path != "*":
            path = self._prefix + path
        return f"{path}?{query}" if query else path

    def __repr__(self) -> str:
        return f"Upstream({self.role!r}, {self.base!r})"


UPSTREAMS_KEY: web.AppKey[dict[str, Upstream]] = web.AppKey("graygate.proxy.upstreams", dict)


def _pool(base: str, cfg: UpstreamsConfig) -> Pool:
    url = URL(base)
    assert url.host is not None and url.port is not None  # validated by the config
    return Pool(
        url.scheme,
        url.host,
        url.port,
        url.raw_authority,
        max_connections=cfg.max_connections,
        connect_timeout=cfg.connect_timeout_ms / 1000,
        max_head_bytes=cfg.max_head_bytes,
        max_head_fields=cfg.max_head_fields,
    )


def upstreams_ctx(
    cfg: UpstreamsConfig, mirror: MirrorConfig
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context: a pool per configured upstream under ``UPSTREAMS_KEY``."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        # Serving: the pool wait, the connect (also bounded by connect_timeout_ms) and every
        # wait for the upstream's bytes (the head included) are bounded by timeout_ms: a
        # long streamed answer is fine as long as it keeps coming.
        serve_timeout = cfg.timeout_ms / 1000
        # Mirroring: the whole exchange, body included, within mirror.timeout_ms.
        mirror_timeout = mirror.timeout_ms / 1000
        eject = mirror.eject
        bases = {Role.PRIMARY: cfg.primary, Role.CANARY: cfg.canary}
        if cfg.secondary is not None:
            bases[Role.SECONDARY] = cfg.secondary
        hosts: dict[str, str] = {str(k): v for k, v in cfg.host_header.items()}
        upstreams: dict[str, Upstream] = {}
        try:
            for role, base in bases.items():
                upstreams[role] = Upstream(
                    role,
                    base,
                    _pool(base, cfg),
                    serve_timeout,
                    mirror_timeout,
                    hosts.get(role),
                    Ejection(role, eject.consecutive, eject.base_ms / 1000, eject.max_ms / 1000),
                    DiscardGate(eject.consecutive, eject.base_ms / 1000, eject.max_ms / 1000),
                )
            app[UPSTREAMS_KEY] = upstreams
            yield
        finally:
            for up in upstreams.values():
                await up.pool.close()

    return ctx
