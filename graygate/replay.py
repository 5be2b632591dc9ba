"""``graygate replay RUN --to URL``: the recorded requests of a run, sent again to a new build.

Each recorded request (method, path, query, the recorded headers but the redacted ones and
the proxy's own, the body) is sent to ``--to``; its answer becomes the canary side of an
exchange of the new run (``--as``, default ``RUN-replay``) whose primary (and secondary)
side is what was recorded. The new run carries the recorded run's rules, and says what it
is (``runs.config.replay``: of which run, against which target); the diff workers judge it
in this process as it goes, and its verdict is printed at the end (``graygate verdict`` and
``graygate report`` read it like any other run's).

- Requests whose body was truncated at capture cannot be replayed: skipped and counted.
- POST, PUT, PATCH and DELETE only with ``--allow-side-effects``, then marked
  ``X-Gray-Shadow: 1`` as mirrored requests are; without it skipped and counted.
- Redacted headers (``Authorization``, ``Cookie``, ... and those ``redact.headers`` names)
  are dropped; ``--header`` supplies credentials for the replay.
- Paced (``--rate`` per second), bounded (``--concurrency`` in flight), with a progress line.
  Ctrl-C stops sending, waits for what is in flight and records it; ``--resume`` continues
  a replay into the same new run, skipping what it already holds.
- Latency: the new build ran on another host at another time than the recorded primary, so
  the latency check is skipped, saying why, unless ``--compare-latency``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TextIO

import aiohttp
import click

from config.censor import censor_url
from config.schema import RecordConfig, RedactConfig
from graygate.errors import ConfigError, GraygateError
from graygate.values import Answer, RecordedExchange
from graygate.vocabulary import ErrorKind, Role

__all__ = [
    "MAX_CONCURRENCY",
    "MAX_HEADERS",
    "MAX_RATE",
    "ReplayOptions",
    "ReplayStats",
    "replay_cli",
    "replay_headers",
    "replay_run",
]

logger = logging.getLogger(__name__)

MAX_RATE: Final = 100_000.0  # requests per second
MAX_CONCURRENCY: Final = 1_024
MAX_LIMIT: Final = 1_000_000_000
MAX_HEADERS: Final = 64  # --header options
PAGE: Final = 500  # recorded exchanges read at once
FLUSH_EVERY: Final = 200  # answered exchanges written at once
SIDE_EFFECTS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LATENCY_SKIP: Final = (
    "a replay: the new build answered on another host at another time than the recorded "
    "primary (graygate replay --compare-latency compares them anyway)"
)
# Never replayed as recorded: hop-by-hop, framing (the body is sent decoded), the proxy's
# own, and the secrets the store never holds.
_DROP: Final = frozenset(
    {
        "host", "content-length", "content-encoding", "transfer-encoding", "connection",
        "keep-alive", "te", "trailer", "upgrade", "proxy-connection", "expect",
        "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-gray-shadow",
        "x-graygate-headers-dropped",
        "authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    run: str
    to: str
    as_run: str | None = None
    rate: float = 200.0
    concurrency: int = 16
    endpoint: str | None = None
    limit: int | None = None
    headers: tuple[tuple[str, str], ...] = ()
    allow_side_effects: bool = False
    resume: bool = False
    compare_latency: bool = False
    timeout_s: float = 30.0
    judge_timeout_s: float = 300.0

    @property
    def new_run(self) -> str:
        return self.as_run or f"{self.run}-replay"

    def check(self) -> None:
        """ConfigError naming the option that is out of its bounds."""
        url = self.to
        if not (url.startswith("http://") or url.startswith("https://")):
            raise ConfigError("--to", f"{censor_url(url)!r}: expected an http:// or https:// URL")
        if not 0 < self.rate <= MAX_RATE:
            raise ConfigError(
                "--rate", f"{self.rate!r}: expected more than 0, at most {MAX_RATE:g}"
            )
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise ConfigError(
                "--concurrency", f"{self.concurrency!r}: expected 1 to {MAX_CONCURRENCY}"
            )
        if self.limit is not None and not 1 <= self.limit <= MAX_LIMIT:
            raise ConfigError("--limit", f"{self.limit!r}: expected 1 to {MAX_LIMIT}")
        if len(self.headers) > MAX_HEADERS:
            raise ConfigError("--header", f"{len(self.headers)} given, at most {MAX_HEADERS}")
        if not _RUN_NAME.match(self.new_run):
            raise ConfigError(
                "--as", f"{self.new_run!r}: a run name is letters, digits and ._:- (128 at most)"
            )
        if self.new_run == self.run:
            raise ConfigError("--as", f"{self.new_run!r} is the recorded run itself")


@dataclass(slots=True)
class ReplayStats:
    """What a replay did; ``as_dict`` for the summary line."""

    considered: int = 0  # recorded exchanges looked at
    sent: int = 0
    answered: int = 0  # with an HTTP answer
    failed: int = 0  # a transport error (recorded as the canary's error)
    written: int = 0
    rejected: int = 0  # rows the database refused
    already: int = 0  # in the new run already (--resume)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    interrupted: bool = False

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "considered": self.considered,
            "sent": self.sent,
            "answered": self.answered,
            "failed": self.failed,
            "written": self.written,
            "rejected": self.rejected,
            "already_replayed": self.already,
            "skipped": dict(sorted(self.skipped.items())),
            "interrupted": self.interrupted,
        }


def parse_header(text: str) -> tuple[str, str]:
    """``'Name: value'`` as (name, value); ConfigError naming ``--header`` otherwise."""
    name, colon, value = text.partition(":")
    name = name.strip()
    if not colon or not name or any(c in name for c in " \t\r\n") or "\n" in value:
        raise ConfigError("--header", f"{text[:80]!r}: expected 'Name: value'")
    return name, value.strip()


def replay_headers(
    recorded: dict[str, str],
    placeholder: str,
    extra: Sequence[tuple[str, str]],
    redacted: frozenset[str] = frozenset(),
    *,
    shadow: bool,
) -> list[tuple[str, str]]:
    """The headers a recorded request is replayed with: the recorded ones but the redacted
    (by name, or by the placeholder as value) and those in ``_DROP``; then ``extra``
    (``--header``, replacing a recorded one of the same name); ``X-Gray-Shadow: 1`` when
    ``shadow``."""
    given = {name.lower() for name, _ in extra}
    out = [
        (name, value)
        for name, value in recorded.items()
        if name.lower() not in _DROP
        and name.lower() not in redacted
        and name.lower() not in given
        and value != placeholder
    ]
    out.extend(extra)
    if shadow:
        out.append(("X-Gray-Shadow", "1"))
    return out


class _Replayer:
    """Sends one recorded request and builds the new run's exchange from its answer."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        opts: ReplayOptions,
        new_run_id: int,
        redact: RedactConfig,
        record: RecordConfig,
    ) -> None:
        from proxy.recording.building import RecordBuilder

        self.session = session
        self.opts = opts
        self.base = opts.to.rstrip("/")
        self.run_id = new_run_id
        self.builder = RecordBuilder(new_run_id, redact, record)  # as the proxy records
        self.placeholder = redact.placeholder
        self.redacted = frozenset(h.lower() for h in redact.headers)
        self.limit = record.max_body_bytes

    async def send(self, rec: RecordedExchange) -> RecordedExchange:
        url = self.base + rec.path + (f"?{rec.query}" if rec.query else "")
        headers = replay_headers(
            rec.request_headers,
            self.placeholder,
            self.opts.headers,
            self.redacted,
            shadow=rec.method in SIDE_EFFECTS,
        )
        canary: Answer
        start = time.perf_counter()
        try:
            async with self.session.request(
                rec.method,
                url,
                headers=headers,
                data=rec.request_body,
                allow_redirects=False,
                skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
            ) as resp:
                body = bytearray()
                truncated = False
                async for chunk in resp.content.iter_any():
                    body += chunk
                    if len(body) > self.limit:
                        truncated = True
                        break
                latency = None if truncated else (time.perf_counter() - start) * 1000.0
                canary = self.builder.answer(
                    resp.status, resp.headers, bytes(body), truncated, latency
                )
        except TimeoutError:
            canary = Answer(error=ErrorKind.TIMEOUT, latency_ms=None)
        except aiohttp.ClientConnectorError:
            canary = Answer(error=ErrorKind.REFUSED)
        except (aiohttp.ClientError, OSError):
            canary = Answer(error=ErrorKind.RESET)
        return RecordedExchange(
            run_id=self.run_id,
            trace_id=rec.trace_id,
            span_id=rec.span_id,
            received_at=datetime.now(UTC),
            endpoint=rec.endpoint,
            method=rec.method,
            path=rec.path,
            query=rec.query,
            request_headers=rec.request_headers,
            request_body=rec.request_body,
            request_body_truncated=False,
            gray_label=rec.gray_label,
            served_by=Role.PRIMARY,
            primary=rec.primary,
            canary=canary,
            secondary=rec.secondary,
            extra={"replay_of": self.opts.run},
        )


_RUN_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def _new_run_config(stored: dict[str, Any], opts: ReplayOptions) -> dict[str, Any]:
    """The recorded run's configuration, marked as a replay; latency skipped unless asked;
    no runtime sources (nothing samples the new build)."""
    config = dict(stored)
    config["replay"] = {
        "of": opts.run,
        "to": censor_url(opts.to),
        "compare_latency": opts.compare_latency,
        "started_at": datetime.now(UTC).isoformat(),
    }
    if not opts.compare_latency:
        verdict = dict(config.get("verdict") or {})
        latency = dict(verdict.get("latency") or {})
        latency["skip"] = LATENCY_SKIP
        verdict["latency"] = latency
        config["verdict"] = verdict
    runtime = dict(config.get("runtime") or {})
    runtime.update({"primary": None, "canary": None, "required": False})
    config["runtime"] = runtime
    return config


def _section(model: Any, stored: dict[str, Any], key: str) -> Any:
    try:
        return model.model_validate(stored.get(key) or {})
    except ValueError:
        logger.warning("the recorded run's %s configuration is not valid: defaults used", key)
        return model()


async def replay_run(
    engine: Any,
    opts: ReplayOptions,
    *,
    stop: asyncio.Event | None = None,
    progress: Callable[[ReplayStats], None] | None = None,
    judge: bool = True,
) -> tuple[int, ReplayStats]:
    """Replay ``opts.run`` into ``opts.new_run``; (the new run's id, what was done). With
    ``judge``, the diff workers judge the new run meanwhile and until its backlog is empty
    (at most ``opts.judge_timeout_s`` after the last answer)."""
    from diff.evaluate import run_config
    from diff.rules import RuleBook
    from diff.worker import run_workers
    from store.exchanges import exchange_row, write_exchanges
    from store.recorded import count_unjudged, fetch_run, read_recorded, replayed_trace_ids
    from store.runs import ensure_run

    opts.check()
    stop = stop or asyncio.Event()
    source = await fetch_run(engine, opts.run)
    stored: dict[str, Any] = dict(source["config"] or {})
    done: set[tuple[str, str]] = set()
    try:
        existing = await fetch_run(engine, opts.new_run)
    except GraygateError:
        existing = None
    if existing is not None:
        done = await replayed_trace_ids(engine, int(existing["id"]))
        if done and not opts.resume:
            raise ConfigError(
                "--as",
                f"run {opts.new_run!r} already holds {len(done)} exchanges: pass --resume to "
                "continue it, or name another run with --as",
            )
    new_id = await ensure_run(
        engine,
        opts.new_run,
        primary_url=source["primary_url"],
        canary_url=opts.to,
        config_json=_new_run_config(stored, opts),
        primary_version=source["primary_version"],
    )
    redact = _section(RedactConfig, stored, "redact")
    record = _section(RecordConfig, stored, "record")
    stats = ReplayStats()
    pending: list[RecordedExchange] = []
    sem = asyncio.Semaphore(opts.concurrency)
    in_flight: set[asyncio.Task[None]] = set()

    async def flush() -> None:
        batch = pending[:]
        pending.clear()
        if batch:
            result = await write_exchanges(engine, [exchange_row(r) for r in batch])
            stats.rejected += len(result.rejected)
            stats.written += len(batch) - len(result.rejected)

    timeout = aiohttp.ClientTimeout(total=opts.timeout_s, connect=min(opts.timeout_s, 5.0))
    connector = aiohttp.TCPConnector(limit=opts.concurrency)
    rulebook = RuleBook.from_config(run_config(opts.new_run, _new_run_config(stored, opts)).compare)
    async with contextlib.AsyncExitStack() as stack:
        if judge:
            await stack.enter_async_context(run_workers(engine, new_id, rulebook, count=1))
        session = await stack.enter_async_context(
            aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)
        )
        replayer = _Replayer(session, opts, new_id, redact, record)

        async def one(rec: RecordedExchange) -> None:
            try:
                out = await replayer.send(rec)
                assert out.canary is not None
                if out.canary.error is None:
                    stats.answered += 1
                else:
                    stats.failed += 1
                pending.append(out)
                if len(pending) >= FLUSH_EVERY:
                    await flush()
            finally:
                sem.release()

        started = time.monotonic()
        after = 0
        paced = 0
        try:
            while not stop.is_set():
                page = await read_recorded(
                    engine, int(source["id"]), after_id=after, limit=PAGE, endpoint=opts.endpoint
                )
                if not page:
                    break
                for row_id, rec in page:
                    after = row_id
                    if stop.is_set() or (opts.limit is not None and stats.considered >= opts.limit):
                        break
                    stats.considered += 1
                    if (rec.trace_id, rec.span_id) in done:
                        stats.already += 1
                        continue
                    if rec.primary is None:
                        stats.skip("no_primary_answer")
                        continue
                    if rec.request_body_truncated:
                        stats.skip("body_truncated")
                        continue
                    if rec.method in SIDE_EFFECTS and not opts.allow_side_effects:
                        stats.skip("side_effects")
                        continue
                    if rec.method == "CONNECT" or rec.mirror_skipped == "upgrade_not_mirrored":
                        stats.skip("not_replayable")
                        continue
                    delay = started + paced / opts.rate - time.monotonic()
                    paced += 1
                    if delay > 0:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), delay)
                        if stop.is_set():
                            break
                    await sem.acquire()
                    stats.sent += 1
                    task = asyncio.get_running_loop().create_task(one(rec))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                    if progress is not None and stats.sent % 20 == 0:
                        progress(stats)
                if opts.limit is not None and stats.considered >= opts.limit:
                    break
        finally:
            stats.interrupted = stop.is_set()
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)
            await flush()
            if progress is not None:
                progress(stats)
        if judge and not stats.interrupted:
            deadline = time.monotonic() + opts.judge_timeout_s
            while await count_unjudged(engine, new_id) and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.2)
                if stop.is_set():
                    break
    return new_id, stats


def _progress_line(out: TextIO) -> Callable[[ReplayStats], None]:
    tty = out.isatty()

    def show(stats: ReplayStats) -> None:
        line = (
            f"replay: {stats.considered} read, {stats.sent} sent, {stats.answered} answered, "
            f"{stats.failed} failed, {sum(stats.skipped.values())} skipped"
        )
        if tty:
            out.write("\r" + line)
        else:
            return
        out.flush()

    return show


async def _replay_command(engine: Any, opts: ReplayOptions, out: TextIO, err: TextIO) -> int:
    import orjson

    from graygate.verdict_command import verdict_command

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        _, stats = await replay_run(engine, opts, stop=stop, progress=_progress_line(err))
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    if err.isatty():
        err.write("\n")
    err.write(
        f"graygate: replay of {opts.run!r} to {censor_url(opts.to)} as {opts.new_run!r}: "
        f"{orjson.dumps(stats.as_dict()).decode()}\n"
    )
    if stats.interrupted:
        err.write(f"graygate: interrupted; continue with --as {opts.new_run} --resume\n")
        return 130
    return await verdict_command(
        engine, opts.new_run, wait=False, timeout=0.0, as_json=False, out=out
    )


@click.command("replay")
@click.argument("run")
@click.option("--to", "to", required=True, help="Base URL of the build to replay to.")
@click.option("--as", "as_run", default=None, help="The new run's name [default: RUN-replay].")
@click.option(
    "--rate",
    type=click.FloatRange(0, MAX_RATE, min_open=True),
    default=200.0,
    show_default=True,
    help="Requests per second.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, MAX_CONCURRENCY),
    default=16,
    show_default=True,
    help="Requests in flight at most.",
)
@click.option("--endpoint", default=None, help="Only this endpoint, e.g. 'GET /api/orders/{id}'.")
@click.option("--limit", type=click.IntRange(1, MAX_LIMIT), default=None, help="At most N.")
@click.option("--header", "headers", multiple=True, help="'Name: value', sent with each request.")
@click.option("--allow-side-effects", is_flag=True, help="Replay POST/PUT/PATCH/DELETE too.")
@click.option("--resume", is_flag=True, help="Continue a replay into the same --as run.")
@click.option("--compare-latency", is_flag=True, help="Judge latency against the recording.")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), default=None,
              envvar="GRAYGATE_CONFIG", help="graygate.yaml (for the database).")  # fmt: skip
@click.option("--database-url", default=None, help="PostgreSQL URL.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, hidden=True)
def replay_cli(
    run: str,
    to: str,
    as_run: str | None,
    rate: float,
    concurrency: int,
    endpoint: str | None,
    limit: int | None,
    headers: tuple[str, ...],
    allow_side_effects: bool,
    resume: bool,
    compare_latency: bool,
    config_path: str | None,
    database_url: str | None,
    data_dir: str | None,
) -> None:
    """Re-send RUN's recorded requests to a new build; judge its answers as a new run.

    Exit 0 GO, 1 NO_GO, 2 INCONCLUSIVE, 3 cannot answer, 130 interrupted (--resume)."""
    from graygate.errors import StoreUnavailable, UnknownRun

    try:
        opts = ReplayOptions(
            run=run,
            to=to,
            as_run=as_run,
            rate=rate,
            concurrency=concurrency,
            endpoint=endpoint,
            limit=limit,
            headers=tuple(parse_header(h) for h in headers),
            allow_side_effects=allow_side_effects,
            resume=resume,
            compare_latency=compare_latency,
        )
        opts.check()
        code = _on_database(config_path, database_url, data_dir, opts)
    except ConfigError as exc:
        click.echo(f"graygate: config error: {exc}", err=True)
        sys.exit(2)
    except (StoreUnavailable, UnknownRun) as exc:
        click.echo(f"graygate: {exc}", err=True)
        sys.exit(3)
    except GraygateError as exc:
        click.echo(f"graygate: {exc}", err=True)
        sys.exit(1)
    sys.exit(code)


def _on_database(
    config_path: str | None, database_url: str | None, data_dir: str | None, opts: ReplayOptions
) -> int:
    """Open the database as the other commands do (--database-url, else the config's, else
    ``GRAYGATE_DATABASE_URL``, else the embedded one) and replay on it."""
    import os
    from pathlib import Path

    from config.schema import check_database_url
    from graygate.embedded_pg import open_database
    from graygate.processes import run_async
    from store.engine import create_engine

    url = database_url
    if url is None and config_path is not None:
        from config.load import load_config

        url = load_config(config_path).database.url
    url = url or os.environ.get("GRAYGATE_DATABASE_URL") or None
    if url is not None:
        try:
            url = check_database_url(url)
        except ValueError as exc:
            raise ConfigError("--database-url", f"{censor_url(url)!r}: {exc}") from None
    with open_database(url, Path(data_dir) if data_dir else None) as handle:

        async def go() -> int:
            engine = create_engine(handle.url, pool_size=4)
            try:
                return await _replay_command(engine, opts, sys.stdout, sys.stderr)
            finally:
                await engine.dispose()

        return run_async(go)
