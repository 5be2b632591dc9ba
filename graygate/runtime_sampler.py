"""The runtime sampler: polls the canary's (and the primary's) Go runtime figures.

Owned by the application: ``app.cleanup_ctx.append(runtime_sampler_ctx(cfg, engine,
run_id))`` starts one polling task per configured source (``runtime.canary``,
``runtime.primary``) through :class:`~graygate.tasks.TaskSet`, with its own HTTP session, and
stops them on cleanup. The :class:`RuntimeSampler` is stored under :data:`RUNTIME_SAMPLER`.

Every ``runtime.interval_s`` seconds a task reads expvar (``/debug/vars``) and/or the
Prometheus page, turns the reading into a sample with the GC pauses that ended since the
previous good reading (``diff.runtime_checks.with_new_pauses``) and stores it. With both sources
configured, expvar gives the pauses and Prometheus fills what expvar lacks (e.g. the
goroutine count when the service publishes none); when expvar fails Prometheus stands in.

A failed poll (refused, timeout, bad status, unparseable body) is stored as a sample with
``error`` set; nothing a poll or the database does ever ends the loop. Samples the database
would not take are kept (a bounded backlog) and stored with the next ones.

When several processes serve the same run, one of them samples each role: the holder of a
PostgreSQL advisory lock (``store.runtime_samples.SamplerLock``); the others stand by and take over
when it goes. While the database is away nobody can tell who holds it: every process keeps
sampling into its backlog, and only the one that gets the lock back stores it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from config.schema import GraygateConfig, RuntimeConfig, RuntimeSource
from diff.runtime_checks import (
    RuntimeParseError,
    RuntimeSample,
    merge,
    parse_expvar,
    parse_prometheus,
    with_new_pauses,
)
from graygate.errors import one_line
from graygate.http_get import NoAnswer, http_get
from graygate.tasks import TaskSet
from graygate.vocabulary import Role
from store.runtime_samples import SamplerLock, insert_samples

__all__ = [
    "MAX_BACKLOG",
    "MAX_BODY_BYTES",
    "RUNTIME_SAMPLER",
    "RoleStats",
    "RuntimeSampler",
    "fetch_reading",
    "runtime_sampler_ctx",
]

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 << 20  # a runtime page larger than this is an error
MAX_BACKLOG = 1_000  # samples kept per role while the database is away


class _PollError(Exception):
    """A poll failed; the message is what the sample's ``error`` says."""


@dataclass(slots=True)
class RoleStats:
    polls: int = 0
    failed_polls: int = 0
    stored: int = 0
    dropped: int = 0  # samples lost because the backlog was full
    last: RuntimeSample | None = None
    # True: this process samples the role; False: another one does; None: unknown (the
    # database is away) or not yet asked.
    leader: bool | None = None


def _timeout(interval_s: float) -> aiohttp.ClientTimeout:
    total = min(10.0, max(1.0, interval_s))
    return aiohttp.ClientTimeout(total=total, connect=min(total, 2.0))


async def _get(
    session: aiohttp.ClientSession, url: str, client_timeout: aiohttp.ClientTimeout
) -> bytes:
    try:
        got = await http_get(session, url, client_timeout, limit=MAX_BODY_BYTES)
    except NoAnswer as exc:
        raise _PollError(f"{exc}: {url}") from None
    if got.status != 200:
        raise _PollError(f"HTTP {got.status} from {url}")
    if got.truncated:
        raise _PollError(f"{url}: body larger than {MAX_BODY_BYTES} bytes")
    return got.body


async def fetch_reading(
    session: aiohttp.ClientSession,
    source: RuntimeSource,
    *,
    client_timeout: aiohttp.ClientTimeout | None = None,
) -> RuntimeSample:
    """One reading of ``source`` (expvar, Prometheus or both), pauses not yet computed.

    Never raises for a failed poll: the sample carries the ``error``.
    """
    tmo = client_timeout or _timeout(10.0)
    expvar: RuntimeSample | None = None
    prom: RuntimeSample | None = None
    errors: list[str] = []
    if source.expvar is not None:
        try:
            body = await _get(session, source.expvar, tmo)
            expvar = parse_expvar(body, taken_at=datetime.now(UTC))
        except (_PollError, RuntimeParseError) as exc:
            errors.append(str(exc))
    if source.prometheus is not None:
        try:
            body = await _get(session, source.prometheus, tmo)
            text = body.decode("utf-8", errors="replace")
            prom = parse_prometheus(text, taken_at=datetime.now(UTC))
        except (_PollError, RuntimeParseError) as exc:
            errors.append(str(exc))
    if expvar is not None:
        return merge(expvar, prom) if prom is not None else expvar
    if prom is not None:
        return prom
    kind = "expvar" if source.expvar is not None else "prometheus"
    return RuntimeSample.failed(
        datetime.now(UTC), kind, "; ".join(errors) or "no runtime source configured"
    )


class RuntimeSampler:
    """Polls the configured runtime sources and stores what it reads."""

    def __init__(
        self,
        cfg: RuntimeConfig,
        engine: AsyncEngine,
        run_id: int,
        session: aiohttp.ClientSession,
    ) -> None:
        self.cfg = cfg
        self.engine = engine
        self.run_id = run_id
        self.session = session
        self.stats: dict[str, RoleStats] = {}
        self._tasks = TaskSet("runtime-sampler")
        self._stop = asyncio.Event()
        self._prev: dict[str, RuntimeSample] = {}
        self._backlog: dict[str, list[RuntimeSample]] = {}

    @property
    def sources(self) -> dict[str, RuntimeSource]:
        out: dict[str, RuntimeSource] = {}
        for role, src in ((Role.CANARY, self.cfg.canary), (Role.PRIMARY, self.cfg.primary)):
            if src is not None and (src.expvar is not None or src.prometheus is not None):
                out[role] = src
        return out

    def start(self) -> None:
        for role, src in self.sources.items():
            self.stats[role] = RoleStats()
            self._tasks.spawn(self._loop(role, src), name=role)

    async def stop(self) -> None:
        self._stop.set()
        await self._tasks.drain(grace=max(2.0, _timeout(self.cfg.interval_s).total or 0))

    async def poll_once(
        self, role: str, source: RuntimeSource, *, store: bool = True
    ) -> RuntimeSample:
        """Read ``source`` once, compute the new pauses against the last good reading of
        ``role``, store the sample (with any backlog; ``store=False``: only add it to the
        backlog) and return it."""
        stats = self.stats.setdefault(role, RoleStats())
        reading = await fetch_reading(
            self.session, source, client_timeout=_timeout(self.cfg.interval_s)
        )
        sample = with_new_pauses(self._prev.get(role), reading)
        stats.polls += 1
        if sample.error is None:
            self._prev[role] = sample
        else:
            stats.failed_polls += 1
            logger.debug("runtime poll of the %s failed: %s", role, sample.error)
        stats.last = sample
        await self._store(role, sample, insert=store)
        return sample

    async def _store(self, role: str, sample: RuntimeSample, *, insert: bool) -> None:
        stats = self.stats[role]
        backlog = self._backlog.setdefault(role, [])
        backlog.append(sample)
        if len(backlog) > MAX_BACKLOG:
            del backlog[0]
            stats.dropped += 1
        if not insert:
            return
        try:
            stats.stored += await insert_samples(self.engine, self.run_id, role, backlog)
            backlog.clear()
        except Exception as exc:  # the database may be away: keep the samples, keep polling
            logger.warning(
                "could not store %d runtime sample(s) of the %s: %s",
                len(backlog),
                role,
                one_line(exc),
            )

    async def _tick(self, role: str, source: RuntimeSource, lock: SamplerLock) -> None:
        stats = self.stats[role]
        leader = await lock.acquire()
        if leader != stats.leader:
            if leader is None:
                state = "database away, sampling into the backlog"
            else:
                state = "this process samples" if leader else "another process samples"
            logger.info("runtime sampling of the %s: %s", role, state)
            stats.leader = leader
        if leader is False:
            # Another process samples and stores: what this one read would be a duplicate,
            # and its next reading must not claim the pauses the other one stored.
            self._backlog.pop(role, None)
            self._prev.pop(role, None)
            return
        await self.poll_once(role, source, store=leader is True)

    async def _loop(self, role: str, source: RuntimeSource) -> None:
        loop = asyncio.get_running_loop()
        interval = self.cfg.interval_s
        next_at = loop.time()
        lock = SamplerLock(self.engine, self.run_id, role)
        try:
            while not self._stop.is_set():
                try:
                    await self._tick(role, source, lock)
                except asyncio.CancelledError:
                    raise
                except Exception:  # a bug must not end the sampling either
                    logger.exception("runtime sampling of the %s failed", role)
                next_at += interval
                now = loop.time()
                if next_at < now:  # a slow poll: skip the ticks it missed
                    next_at = now + interval
                try:
                    await asyncio.wait_for(self._stop.wait(), timeout=next_at - now)
                except TimeoutError:
                    pass
        finally:
            await lock.release()


RUNTIME_SAMPLER = web.AppKey("runtime_sampler", RuntimeSampler)


def runtime_sampler_ctx(
    cfg: GraygateConfig,
    engine: AsyncEngine | web.AppKey[AsyncEngine],
    run_id: int | web.AppKey[int],
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` entry that samples ``cfg.runtime``'s sources while the app runs.

    ``engine`` and ``run_id`` may be given as the ``web.AppKey`` an earlier cleanup_ctx
    stores them under; they are looked up when the app starts.
    """

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        eng = app[engine] if isinstance(engine, web.AppKey) else engine
        rid = app[run_id] if isinstance(run_id, web.AppKey) else run_id
        async with aiohttp.ClientSession(
            headers={"User-Agent": "graygate-runtime-sampler"},
            connector=aiohttp.TCPConnector(limit=4),
        ) as session:
            sampler = RuntimeSampler(cfg.runtime, eng, rid, session)
            app[RUNTIME_SAMPLER] = sampler
            sampler.start()
            try:
                yield
            finally:
                await sampler.stop()

    return ctx
