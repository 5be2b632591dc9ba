"""``graygate serve``: start the roles, keep them running, stop them in order.

One engine per process, shared by the roles. Start order: schema check (or migration, for
the embedded database), the run, preflight, then the admin API (or, for a proxy without
it, the probes alone: ``/healthz``, ``/readyz`` and ``/metrics`` on the admin port, so
every pod can be probed and scraped), the diff workers and runtime sampler, and last the
proxy listener. Stop order (SIGTERM or SIGINT): ``/readyz`` answers 503 at once and the
proxy keeps serving for ``shutdown.grace_s`` (load balancers and kube-proxy stop sending; a
second signal ends the grace), then it stops accepting and finishes in-flight requests and
mirrors, the record writer process writes (or spills) what it was handed and exits, the
workers finish their batch, and the engine closes.

Each proxy process starts its own record writer process (``proxy.recording.link``): the
records are built and COPYed there, off the proxy's event loop and GIL; so Prometheus
multiprocess mode is on whenever the proxy role runs.

``--processes N`` starts N-1 more processes that run only the proxy role on the same port
(SO_REUSEPORT; a named port, not 0), once this process has checked the schema. When this
process is a proxy and the worker or admin role is asked for too, those run in one more
child process (``--role worker,admin``): the diff workers, the runtime sampler, the admin
API with its verdicts, reports and the verdict gauge. Nothing CPU-heavy shares the proxy's
event loop or GIL, and no one reading a report costs a user a millisecond. The admin port's
probes then speak for the proxy through its heartbeat (``graygate.heartbeat``): ``/readyz``
is 200 once the proxy listens, and both probes fail when its beats stop. On SIGTERM that
child answers ``/readyz`` 503 and keeps the admin port open for the same grace period.
This process runs the proxy, sends the children SIGTERM when it stops, and stops (exit
code of the child, else 1) when one of them exits; should it die, the kernel sends them
SIGTERM (Linux).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from config.schema import GraygateConfig, parse_listen
from graygate.embedded_pg import DatabaseHandle, default_data_dir
from graygate.errors import ConfigError, StoreUnavailable
from graygate.heartbeat import Pulse, beat
from graygate.processes import lower_priority, parent_death_signal, run_async

__all__ = ["Readiness", "probes_app", "raise_fd_limit", "serve_forever"]

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 15.0
_LOG_LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"})


def raise_fd_limit() -> int:
    """Raise the soft limit of open files to the hard one (each client connection is a
    file); the soft limit now. A limit that cannot be raised is left as it is."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError) as exc:
            logger.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
    if soft != resource.RLIM_INFINITY and soft < 4096:
        logger.warning(
            "the open-file limit is %d: client connections beyond it are refused by the "
            "kernel (listen_limits.max_connections counts below it)",
            soft,
        )
    return soft


def serve_forever(
    cfg: GraygateConfig,
    handle: DatabaseHandle,
    *,
    roles: frozenset[str],
    processes: int,
    config_path: str,
    reuse_port: bool,
    data_dir: Path | None,
    run_preflight: bool = True,
    probes: bool = True,
    heartbeat_fd: int | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT; the exit code. ``probes``: a proxy without the admin
    role serves ``/healthz`` and ``/readyz`` on the admin port (off in the extra proxy
    processes of ``--processes N``: the first process has them). ``heartbeat_fd``: this
    process's admin port speaks for the proxy process beating on that pipe."""
    from store import migrate

    if processes > 1 and "proxy" in roles and parse_listen(cfg.listen)[1] == 0:
        raise ConfigError(
            "listen",
            f"{cfg.listen!r}: port 0 with --processes {processes}: each process would "
            "listen on a port of its own; name the port",
        )
    raise_fd_limit()
    if handle.embedded:
        migrate.guarded(lambda: migrate.upgrade(handle.url), handle.url)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cores and processes > cores:
        logger.warning(
            "--processes %d is more than the %d core(s) this process may use: extra proxy "
            "processes only contend for the same cores (each costs ~25%% more CPU per request)",
            processes,
            cores,
        )
    level_argv = _level_argv()
    base_argv = [
        sys.executable, "-m", "graygate", *level_argv, "serve", "-c", config_path, "--no-preflight",
        "--no-probes", "--mode", cfg.mode, *(["--access-log"] if cfg.log.access else []),
        *(["--data-dir", str(data_dir)] if data_dir else []),
    ]  # fmt: skip
    argvs = [[*base_argv, "--role", "proxy", "--reuse-port"]] * (processes - 1)
    local_roles = roles
    pass_fds: tuple[int, ...] = ()
    beat_fd: int | None = None
    off_loop = roles & {"worker", "admin"} if "proxy" in roles else frozenset()
    if off_loop:
        # Nothing CPU-heavy shares the proxy's event loop or GIL: the diff workers (and the
        # runtime sampler that goes with them), the admin API (verdicts, reports, the
        # verdict gauge) run in a process of their own.
        local_roles = roles - off_loop
        child = [*base_argv, "--role", ",".join(sorted(off_loop))]
        if "admin" in off_loop:
            probes = False  # the child holds the admin port, probes included
            read_fd, beat_fd = os.pipe()
            pass_fds = (read_fd,)
            child += ["--heartbeat-fd", str(read_fd)]
        argvs.append(child)
    metrics_dir: str | None = None
    # A proxy process has its record writer process (proxy.recording.link): its series too.
    if (argvs or "proxy" in roles) and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        if "prometheus_client" in sys.modules:
            # Too late: its values were made in-process, and this process's series would be
            # missing from the admin port's scrape. A bug in what imports what.
            raise RuntimeError("prometheus_client was imported before serve chose its mode")
        # Several processes (more proxies, the worker child, the record writers): one scrape
        # of the admin port
        # shows every process's series. Set before proxy.metrics and diff.verdict_metrics
        # are imported, here and in the children (they inherit it).
        metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(
            prefix="graygate-metrics-"
        )
    if "worker" in local_roles and "proxy" not in local_roles:
        # A process that judges and serves no user (the worker child of a proxy, or a
        # worker of its own): all of it yields the CPU, its event loop (claiming, decoding
        # and storing large bodies) as much as its comparing threads, which run lower still.
        lower_priority(cfg.workers.nice)
    try:
        return run_async(
            lambda: _serve(
                cfg,
                handle,
                roles=local_roles,
                reuse_port=reuse_port,
                data_dir=data_dir,
                run_preflight=run_preflight,
                probes=probes,
                children=_Children(argvs, handle.url, cfg.shutdown.grace_s, pass_fds),
                beat_fd=beat_fd,
                heartbeat_fd=heartbeat_fd,
            )
        )
    finally:
        for fd in pass_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        if metrics_dir is not None:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]
            shutil.rmtree(metrics_dir, ignore_errors=True)


_PDEATHSIG = parent_death_signal()


def _level_argv() -> list[str]:
    """The children log as this process does: the level by argv (an environment variable
    would outlive this command in a process that runs several), the format by environment."""
    level = logging.getLevelName(logging.getLogger().level)
    return ["--log-level", level] if level in _LOG_LEVELS else []


class _Children:
    """The child processes: the extra proxy processes of ``--processes N`` and the diff
    worker process when this one is also a proxy. Started once this process has checked
    the schema and holds its signal handlers, so a failure or a signal before then leaves
    none behind; stopped with SIGTERM, killed after the grace period; sent SIGTERM by the
    kernel should this process die without stopping them (Linux)."""

    def __init__(
        self,
        argvs: list[list[str]],
        database_url: str,
        grace_s: float,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        self.argvs = argvs
        self.grace_s = grace_s
        self.pass_fds = pass_fds  # the heartbeat pipe's reading end, for the admin child
        # The URL goes by environment (config override), not argv: argv is world-readable.
        self.env = {**os.environ, "GRAYGATE_DATABASE_URL": database_url}
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        for argv in self.argvs:
            self.procs.append(
                subprocess.Popen(
                    argv,
                    env=self.env,
                    preexec_fn=_PDEATHSIG,
                    pass_fds=self.pass_fds if "--heartbeat-fd" in argv else (),
                )
            )

    def exited(self) -> subprocess.Popen[bytes] | None:
        """The first child that has exited, if any."""
        return next((p for p in self.procs if p.poll() is not None), None)

    def terminate(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        self.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=self.grace_s + SHUTDOWN_GRACE_S + 5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class Readiness:
    """Whether this process's proxy takes traffic: not before its listener is open and its
    record writer runs (``listening``), and no more from the first SIGTERM/SIGINT
    (``draining``). The probes-only ``/readyz`` answers from it; the admin API's answers 503
    while draining (it speaks for the proxy through the heartbeat otherwise)."""

    __slots__ = ("listening", "since")

    def __init__(self) -> None:
        self.listening = False
        self.since: float | None = None  # when draining started

    def drain(self) -> None:
        if self.since is None:
            self.since = time.monotonic()

    @property
    def draining(self) -> bool:
        return self.since is not None


_DRAINING_BODY = '{"ready": false, "error": "shutting down", "status": 503}'
_STARTING_BODY = (
    '{"ready": false, "error": "starting: the proxy is not listening yet", "status": 503}'
)


def _draining_middleware(readiness: Readiness) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        if readiness.draining and request.path == "/readyz":
            return web.Response(status=503, text=_DRAINING_BODY, content_type="application/json")
        response: web.StreamResponse = await handler(request)
        return response

    return middleware


def probes_app(readiness: Readiness) -> web.Application:
    """The admin port of a proxy without the admin role: ``/healthz`` (200 while the
    process serves), ``/readyz`` (503 until the proxy listens, 200, 503 once it is shutting
    down) and ``/metrics`` (this process's series, for the ServiceMonitor); no API, no
    report, no database read."""
    from graygate.admin.app import METRICS_REGISTRY_KEY, metrics, metrics_registry

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        if not readiness.listening:
            return web.Response(status=503, text=_STARTING_BODY, content_type="application/json")
        return web.json_response({"ready": True})

    app = web.Application(middlewares=[_draining_middleware(readiness)])
    app[METRICS_REGISTRY_KEY] = metrics_registry()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


VERDICT_EVERY_S = 15.0


async def _verdict_gauge(engine: AsyncEngine, run: str, stop: asyncio.Event) -> None:
    """Keep ``graygate_verdict{run}`` and ``graygate_check_passed{run,check}``
    (``diff.verdict_metrics``, set by every evaluation) fresh: the process with the admin
    role evaluates the run every ``VERDICT_EVERY_S`` seconds (not recorded in the run's
    history), so a Prometheus-based gate needs no one to call the API. A database away
    leaves the last value."""
    from diff.evaluate import evaluate_run

    while not stop.is_set():
        try:
            await evaluate_run(engine, run, record=False)
        except Exception as exc:  # the database away, the run not there yet
            logger.debug("verdict gauge: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), VERDICT_EVERY_S)


async def _check_schema(engine: AsyncEngine) -> None:
    from store.engine import ping, schema_revision
    from store.migrate import head_revision

    await ping(engine)
    revision = await schema_revision(engine)
    head = await asyncio.to_thread(head_revision)
    if revision != head:
        raise StoreUnavailable(
            f"the database schema is at revision {revision or 'none'}, graygate needs {head}: "
            "run `graygate db upgrade`"
        )


@contextlib.asynccontextmanager
async def _site(
    app: web.Application,
    listen: str,
    *,
    reuse_port: bool,
) -> AsyncIterator[str]:
    """Serve ``app`` (the admin API, the probes) on ``listen`` with aiohttp."""
    host, port = parse_listen(listen)
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None, backlog=4096)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError("listen", f"{listen!r}: cannot listen: {exc.strerror}") from None
        bound = runner.addresses[0] if runner.addresses else (host, port)
        yield f"http://{bound[0]}:{bound[1]}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def _proxy_site(app: web.Application, listen: str, *, reuse_port: bool) -> AsyncIterator[str]:
    """Serve the proxy app (``proxy.app.make_proxy_app``) on ``listen`` with the proxied
    port's server (``proxy.server.ProxyServer``): on the way out it stops accepting, lets
    the requests in flight finish within ``SHUTDOWN_GRACE_S``, then drains the mirrors."""
    from proxy.server import ProxyServer

    host, port = parse_listen(listen)
    server = ProxyServer(app, shutdown_timeout=SHUTDOWN_GRACE_S)
    await server.setup()
    try:
        try:
            bound = await server.start(host, port, reuse_port=reuse_port)
        except OSError as exc:
            raise ConfigError("listen", f"{listen!r}: cannot listen: {exc.strerror}") from None
        yield f"http://{bound[0]}:{bound[1]}"
    finally:
        await server.cleanup()


async def _serve(
    cfg: GraygateConfig,
    handle: DatabaseHandle,
    *,
    roles: frozenset[str],
    reuse_port: bool,
    data_dir: Path | None,
    run_preflight: bool,
    probes: bool,
    children: _Children,
    beat_fd: int | None,
    heartbeat_fd: int | None,
) -> int:
    from diff.rules import RuleBook
    from diff.worker import run_workers
    from diff.write_checker import write_checker
    from graygate.preflight import preflight
    from graygate.record_writer import WriterSetup
    from graygate.runtime_sampler import runtime_sampler_ctx
    from proxy.app import make_proxy_app
    from proxy.recording.link import WriterLink
    from store.engine import censor_dsn, create_engine
    from store.runs import ensure_run

    stop = asyncio.Event()
    hurry = asyncio.Event()  # a second signal: no grace

    def on_signal() -> None:
        if stop.is_set():
            hurry.set()
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    readiness = Readiness()

    engine = create_engine(handle.url, pool_size=cfg.database.pool_size)
    try:
        await _check_schema(engine)
        run_id = await ensure_run(
            engine,
            cfg.run,
            primary_url=cfg.upstreams.primary,
            canary_url=cfg.upstreams.canary,
            config_json=cfg.model_dump(mode="json"),
        )
        logger.info("run %r (id %d) on database %s", cfg.run, run_id, censor_dsn(handle.url))
        if run_preflight and "proxy" in roles:
            for finding in await preflight(cfg, None, engine, run_id):
                level = logging.INFO if finding.ok else logging.WARNING
                logger.log(level, "preflight %s: %s", finding.check, finding.detail)

        children.start()
        async with contextlib.AsyncExitStack() as stack:
            if "admin" in roles:
                # Imported here: the verdict's statistics stay out of a proxy-only process.
                from graygate.admin.app import PULSE_KEY, make_admin_app

                admin = make_admin_app(cfg, engine)
                admin.middlewares.insert(0, _draining_middleware(readiness))
                if heartbeat_fd is not None:
                    pulse = Pulse(heartbeat_fd)
                    pulse.start()
                    stack.callback(pulse.stop)
                    admin[PULSE_KEY] = pulse
                url = await stack.enter_async_context(
                    _site(admin, cfg.admin.listen, reuse_port=False)
                )
                logger.info("admin API on %s (report: %s/runs/%s)", url, url, cfg.run)
                gauge_task = asyncio.get_running_loop().create_task(
                    _verdict_gauge(engine, cfg.run, stop), name="verdict-gauge"
                )
                stack.push_async_callback(_cancel, gauge_task)
            elif "proxy" in roles and probes:
                url = await stack.enter_async_context(
                    _site(probes_app(readiness), cfg.admin.listen, reuse_port=False)
                )
                logger.info("probes on %s (/healthz, /readyz)", url)
            if "worker" in roles:
                await stack.enter_async_context(
                    run_workers(
                        engine,
                        run_id,
                        RuleBook.from_config(cfg.compare),
                        count=1,
                        nice=cfg.workers.nice,
                    )
                )
                await stack.enter_async_context(write_checker(engine, run_id, cfg.writes))
                if cfg.runtime.canary is not None or cfg.runtime.primary is not None:
                    sampler_app = web.Application()
                    sampler_app.cleanup_ctx.append(runtime_sampler_ctx(cfg, engine, run_id))
                    runner = web.AppRunner(sampler_app, handle_signals=False)
                    await runner.setup()
                    stack.push_async_callback(runner.cleanup)
                logger.info("diff worker judging run %r", cfg.run)
            if "proxy" in roles:
                spill_dir = Path(cfg.record.spill_dir or (data_dir or default_data_dir()) / "spill")
                # Records are built and written in a process of their own, fed by a pipe:
                # started (and restarted) by this one, which alone can count what a dead
                # writer never took; closed after the mirrors are drained (the stack).
                setup = WriterSetup(cfg, handle.url, run_id, str(spill_dir))
                link = await stack.enter_async_context(
                    WriterLink(
                        run_id=run_id,
                        queue_size=cfg.record.queue_size,
                        argv=[sys.executable, "-m", "graygate", *_level_argv(), "record-writer"],
                        setup=setup.dumps(),
                        intents_dir=spill_dir if cfg.record.spill_max_bytes > 0 else None,
                    )
                )
                app = make_proxy_app(cfg, recorder=link, run_id=run_id)
                url = await stack.enter_async_context(
                    _proxy_site(app, cfg.listen, reuse_port=reuse_port)
                )
                await link.ready()  # its recorder runs (a bad spill_dir stops us here)
                readiness.listening = True  # the probes' /readyz: 200 from now on
                if beat_fd is not None:
                    # From now on the admin child's probes say the proxy is listening.
                    beating = asyncio.Event()
                    beat_task = loop.create_task(beat(beat_fd, beating), name="heartbeat")
                    beat_fd = None  # the task closes it

                    async def stop_beating() -> None:
                        beating.set()
                        await beat_task

                    stack.push_async_callback(stop_beating)
                if cfg.mode == "shadow":
                    logger.info(
                        "shadow proxy on %s: mirrored requests answered 202, sent to "
                        "primary %s and canary %s",
                        url,
                        cfg.upstreams.primary,
                        cfg.upstreams.canary,
                    )
                else:
                    logger.info(
                        "proxy on %s: primary %s serves, canary %s mirrored",
                        url,
                        cfg.upstreams.primary,
                        cfg.upstreams.canary,
                    )
            print(f"graygate: serving run {cfg.run!r}", file=sys.stderr, flush=True)
            code = 0
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
                dead = None if stop.is_set() else children.exited()
                if dead is not None:
                    # A child that could not bind or lost its database printed why.
                    logger.error("child process %d exited with %s", dead.pid, dead.returncode)
                    code = dead.returncode if dead.returncode > 0 else 1
                    stop.set()
            readiness.drain()
            children.terminate()
            grace = cfg.shutdown.grace_s
            speaks_for_proxy = "proxy" in roles or heartbeat_fd is not None
            if speaks_for_proxy and code == 0 and grace > 0 and not hurry.is_set():
                logger.info("stopping: /readyz answers 503; serving on for %g s", grace)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(hurry.wait(), timeout=grace)
            logger.info("stopping: finishing in-flight requests and flushing records")
    finally:
        if beat_fd is not None:  # never started beating (a failure before listening)
            with contextlib.suppress(OSError):
                os.close(beat_fd)
        await asyncio.to_thread(children.stop)
        await engine.dispose()
    return code
