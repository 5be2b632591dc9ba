"""``graygate serve``: start the roles, keep them running, stop them in order.

One engine per process, shared by the roles. Start order: schema check (or migration, for
the embedded database), the run, preflight, then the admin API, the diff workers and
runtime sampler, and last the proxy listener. Stop order (SIGTERM or SIGINT): the proxy
stops accepting and finishes in-flight requests and mirrors, the recorder flushes its queue,
the workers finish their batch, and the engine closes.

``--processes N`` starts N-1 more processes that run only the proxy role on the same port
(SO_REUSEPORT); this process runs every role and forwards signals to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from config.errors import StoreUnavailable
from config.schema import GraygateConfig, parse_listen
from proxy.database import DatabaseHandle, default_data_dir

__all__ = ["serve_forever"]

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 15.0


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
) -> int:
    """Serve until SIGTERM/SIGINT; the exit code."""
    from proxy.cli import run_async
    from store import migrate

    if handle.embedded:
        migrate.upgrade(handle.url)
    children: list[subprocess.Popen[bytes]] = []
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cores and processes > cores:
        logger.warning(
            "--processes %d is more than the %d core(s) this process may use: extra proxy "
            "processes only contend for the same cores (each costs ~25%% more CPU per request)",
            processes, cores,
        )
    if processes > 1:
        os.environ.setdefault(
            "PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="graygate-metrics-")
        )
        for _ in range(processes - 1):
            children.append(
                subprocess.Popen(
                    [
                        sys.executable, "-m", "proxy.cli", "serve", "-c", config_path,
                        "--role", "proxy", "--reuse-port", "--no-preflight",
                        "--database-url", handle.url,
                        *(["--data-dir", str(data_dir)] if data_dir else []),
                    ],
                )
            )
    try:
        return run_async(
            lambda: _serve(
                cfg, handle, roles=roles, reuse_port=reuse_port, data_dir=data_dir,
                run_preflight=run_preflight, children=children,
            )
        )
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=SHUTDOWN_GRACE_S + 5)
            except subprocess.TimeoutExpired:
                child.kill()


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
async def _site(app: web.Application, listen: str, *, reuse_port: bool) -> AsyncIterator[str]:
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
            from config.errors import ConfigError

            raise ConfigError("listen", f"{listen!r}: cannot listen: {exc.strerror}") from None
        bound = runner.addresses[0] if runner.addresses else (host, port)
        yield f"http://{bound[0]}:{bound[1]}"
    finally:
        await runner.cleanup()


async def _serve(
    cfg: GraygateConfig,
    handle: DatabaseHandle,
    *,
    roles: frozenset[str],
    reuse_port: bool,
    data_dir: Path | None,
    run_preflight: bool,
    children: list[subprocess.Popen[bytes]],
) -> int:
    from diff.rules import RuleBook
    from diff.worker import run_workers
    from proxy.admin import make_admin_app
    from proxy.app import make_proxy_app
    from proxy.preflight import preflight
    from proxy.recorder import Recorder
    from proxy.runtime_sampler import runtime_sampler_ctx
    from store.engine import censor_dsn, create_engine
    from store.runs import ensure_run

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

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

        async with contextlib.AsyncExitStack() as stack:
            if "admin" in roles:
                admin = make_admin_app(cfg, engine)
                url = await stack.enter_async_context(
                    _site(admin, cfg.admin.listen, reuse_port=False)
                )
                logger.info("admin API on %s (report: %s/runs/%s)", url, url, cfg.run)
            if "worker" in roles:
                await stack.enter_async_context(
                    run_workers(engine, run_id, RuleBook.from_config(cfg.compare), count=1)
                )
                if cfg.runtime.canary is not None or cfg.runtime.primary is not None:
                    sampler_app = web.Application()
                    sampler_app.cleanup_ctx.append(runtime_sampler_ctx(cfg, engine, run_id))
                    runner = web.AppRunner(sampler_app, handle_signals=False)
                    await runner.setup()
                    stack.push_async_callback(runner.cleanup)
                logger.info("diff worker judging run %r", cfg.run)
            if "proxy" in roles:
                spill_dir = Path(cfg.record.spill_dir or (data_dir or default_data_dir()) / "spill")
                recorder = await stack.enter_async_context(
                    Recorder(engine, cfg.record, default_spill_dir=spill_dir)
                )
                app = make_proxy_app(cfg, recorder=recorder, run_id=run_id)
                url = await stack.enter_async_context(
                    _site(app, cfg.listen, reuse_port=reuse_port)
                )
                logger.info(
                    "proxy on %s: primary %s serves, canary %s mirrored",
                    url, cfg.upstreams.primary, cfg.upstreams.canary,
                )
            print(f"graygate: serving run {cfg.run!r}", file=sys.stderr, flush=True)
            failed = False
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
                for child in children:
                    if child.poll() is not None:
                        logger.error("proxy process %d exited with %s", child.pid, child.returncode)
                        children.remove(child)
                        failed = True
                        stop.set()
                        break
            code = 1 if failed else 0
            logger.info("stopping: finishing in-flight requests and flushing records")
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
    finally:
        await engine.dispose()
    return code
