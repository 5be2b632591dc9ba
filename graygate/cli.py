"""``graygate``: the command line, and the one composition root that wires everything.

Exit codes: 0 success; 2 bad configuration or usage; 3 cannot answer (database away,
unknown run). ``graygate verdict`` adds 1 for NO_GO and 2 for INCONCLUSIVE.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from graygate import governance_cli
from graygate.errors import ConfigError, GraygateError, StoreUnavailable, UnknownRun
from graygate.log_format import LOG_FORMATS, JsonFormatter
from graygate.processes import run_async
from graygate.replay import replay_cli

__all__ = ["main"]

logger = logging.getLogger("graygate")

T = TypeVar("T")

EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 3


def _setup_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # platformdirs warns about XDG_RUNTIME_DIR on machines without a login session.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


def _fail(code: int, message: str) -> NoReturn:
    click.echo(f"graygate: {message}", err=True)
    sys.exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    """Turn graygate's errors into one line on stderr and the documented exit code."""
    try:
        yield
    except ConfigError as exc:
        _fail(EXIT_CONFIG, f"config error: {exc}")
    except (StoreUnavailable, UnknownRun) as exc:
        _fail(EXIT_UNAVAILABLE, str(exc))
    except GraygateError as exc:
        _fail(1, str(exc))


def _load(config_path: str) -> Any:
    from config.load import load_config

    return load_config(config_path)


@contextmanager
def _database(
    config_path: str | None, database_url: str | None, data_dir: str | None
) -> Iterator[Any]:
    """The database handle: --database-url, else the config's, else the environment's,
    else the embedded server in the data directory."""
    from graygate.embedded_pg import open_database

    url = database_url
    if url is None and config_path is not None:
        url = _load(config_path).database.url
    if url is None:
        url = os.environ.get("GRAYGATE_DATABASE_URL") or None
    if url is not None:
        from config.censor import censor_url
        from config.schema import check_database_url

        try:
            url = check_database_url(url)
        except ValueError as exc:
            key = "--database-url" if url == database_url else "database.url"
            raise ConfigError(key, f"{censor_url(url)!r}: {exc}") from None
    with open_database(url, Path(data_dir) if data_dir else None) as handle:
        if handle.embedded:
            click.echo(f"graygate: using the embedded PostgreSQL in {handle.data_dir}", err=True)
        yield handle


_config_option = click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="GRAYGATE_CONFIG",
    help="graygate.yaml (env GRAYGATE_CONFIG).",
)
_db_option = click.option(
    "--database-url", default=None, help="PostgreSQL URL; overrides the config's database.url."
)
_data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where the embedded PostgreSQL and spill files live when no database URL is set.",
)


def _database_options(command: Callable[..., None]) -> Callable[..., None]:
    """-c/--config, --database-url and --data-dir: how a command finds its database."""
    return _config_option(_db_option(_data_dir_option(command)))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    envvar="GRAYGATE_LOG_LEVEL",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False),
)
@click.option(
    "--log-format",
    default="text",
    show_default=True,
    envvar="GRAYGATE_LOG_FORMAT",
    type=click.Choice(LOG_FORMATS),
    help="json: one JSON object per line (with the trace id where there is one).",
)
@click.version_option(package_name="graygate")
def cli(log_level: str, log_format: str) -> None:
    """graygate: mirror traffic to a canary, diff its answers, gate the release."""
    os.environ["GRAYGATE_LOG_FORMAT"] = log_format  # child processes log the same way
    _setup_logging(log_level, log_format)


@cli.command("record-writer", hidden=True)
@click.option("--fd", "fd", type=int, required=True)
@click.option("--taken-fd", "taken_fd", type=int, required=True)
def record_writer(fd: int, taken_fd: int) -> None:
    """A proxy process's record writer (started by the proxy; graygate.record_writer)."""
    from graygate.record_writer import run

    sys.exit(run(fd, taken_fd))


@cli.command()
@_config_option
@click.option(
    "--role",
    default="proxy,worker,admin",
    show_default=True,
    help="Comma list of proxy, worker, admin.",
)
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Proxy processes sharing the listen port (SO_REUSEPORT).",
)
@_db_option
@_data_dir_option
@click.option(
    "--mode",
    type=click.Choice(["inline", "shadow"]),
    default=None,
    help="inline: in front of the primary; shadow: behind a mirror (overrides `mode`).",
)
@click.option(
    "--access-log",
    is_flag=True,
    default=False,
    help="One log line per proxied request (sets `log.access`); JSON with --log-format json.",
)
@click.option("--reuse-port", is_flag=True, hidden=True)
@click.option("--no-preflight", is_flag=True, hidden=True)
@click.option("--no-probes", is_flag=True, hidden=True)
@click.option("--heartbeat-fd", type=int, default=None, hidden=True)
def serve(
    config_path: str | None,
    role: str,
    processes: int,
    database_url: str | None,
    data_dir: str | None,
    mode: str | None,
    access_log: bool,
    reuse_port: bool,
    no_preflight: bool,
    no_probes: bool,
    heartbeat_fd: int | None,
) -> None:
    """Run the proxy, the diff workers and the admin API."""
    if config_path is None:
        _fail(EXIT_CONFIG, "config error: no configuration file: pass -c graygate.yaml")
    roles = {r.strip() for r in role.split(",") if r.strip()}
    unknown = roles - {"proxy", "worker", "admin"}
    if unknown or not roles:
        _fail(EXIT_CONFIG, f"config error: --role: {role!r}: expected proxy, worker, admin")
    with _errors():
        from diff.rules import RuleBook
        from graygate.supervise import serve_forever

        cfg = _load(config_path)
        if mode is not None:
            cfg = cfg.model_copy(update={"mode": mode})
        if access_log:
            cfg = cfg.model_copy(update={"log": cfg.log.model_copy(update={"access": True})})
        RuleBook.from_config(cfg.compare)  # a bad rule path fails here, before anything runs
        if "admin" in roles:
            from graygate.admin.exposure import check_admin_exposure

            check_admin_exposure(cfg)
        with _database(None, database_url or cfg.database.url, data_dir) as handle:
            code = serve_forever(
                cfg,
                handle,
                roles=frozenset(roles),
                processes=processes,
                config_path=config_path,
                reuse_port=reuse_port or processes > 1,
                data_dir=Path(data_dir) if data_dir else None,
                run_preflight=not no_preflight,
                probes=not no_probes,
                heartbeat_fd=heartbeat_fd,
            )
    sys.exit(code)


@cli.group()
def db() -> None:
    """Database schema: upgrade, downgrade, check, current."""


def _on_database(
    config_path: str | None,
    database_url: str | None,
    data_dir: str | None,
    step: Callable[[str], T],
    then: Callable[[T], None],
) -> None:
    """The shape of every ``db`` command: open the database (embedded when no URL is set),
    run ``step`` on its URL under the schema guard (a database away is one line, exit 3),
    and hand the result to ``then`` while the database is still open."""
    from store import migrate

    with _errors(), _database(config_path, database_url, data_dir) as handle:
        then(migrate.guarded(lambda: step(handle.url), handle.url))


@db.command()
@_database_options
@click.option("--revision", default="head", show_default=True)
def upgrade(
    config_path: str | None, database_url: str | None, data_dir: str | None, revision: str
) -> None:
    """Apply migrations up to REVISION."""
    from store import migrate

    _on_database(
        config_path,
        database_url,
        data_dir,
        lambda url: migrate.upgrade(url, revision),
        lambda _: click.echo(f"graygate: database at revision {revision}"),
    )


@db.command()
@_database_options
@click.argument("revision")
def downgrade(
    config_path: str | None, database_url: str | None, data_dir: str | None, revision: str
) -> None:
    """Revert migrations down to REVISION (``base`` for none)."""
    from store import migrate

    _on_database(
        config_path,
        database_url,
        data_dir,
        lambda url: migrate.downgrade(url, revision),
        lambda _: click.echo(f"graygate: database at revision {revision}"),
    )


@db.command()
@_database_options
def check(config_path: str | None, database_url: str | None, data_dir: str | None) -> None:
    """Fail when the tables and the migrations disagree (``alembic check``)."""
    from store import migrate

    def then(diffs: str | None) -> None:
        if diffs:
            _fail(1, f"migrations and tables disagree: {diffs}")
        click.echo("graygate: migrations and tables agree")

    _on_database(config_path, database_url, data_dir, migrate.check, then)


@db.command()
@_database_options
def current(config_path: str | None, database_url: str | None, data_dir: str | None) -> None:
    """Print the database's schema revision and this graygate's head; exit 1 if behind."""
    from store import migrate
    from store.engine import create_engine, schema_revision

    async def revision(url: str) -> str | None:
        engine = create_engine(url, pool_size=1)
        try:
            return await schema_revision(engine)
        finally:
            await engine.dispose()

    def then(rev: str | None) -> None:
        head = migrate.head_revision()
        click.echo(f"revision {rev or 'none'} (head {head})")
        if rev != head:
            sys.exit(1)

    _on_database(
        config_path, database_url, data_dir, lambda url: run_async(lambda: revision(url)), then
    )


@cli.command()
@click.argument("run")
@_database_options
@click.option("--wait", is_flag=True, help="Wait until the verdict is GO or NO_GO.")
@click.option(
    "--timeout", type=float, default=900.0, show_default=True, help="Seconds, with --wait."
)
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
def verdict(
    run: str,
    config_path: str | None,
    database_url: str | None,
    data_dir: str | None,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Exit 0 GO, 1 NO_GO, 2 INCONCLUSIVE, 3 cannot answer."""
    from graygate.verdict_command import verdict_command

    with _errors(), _database(config_path, database_url, data_dir) as handle:
        code = _with_engine(
            handle.url,
            lambda engine: verdict_command(
                engine, run, wait=wait, timeout=timeout, as_json=as_json, out=sys.stdout
            ),
        )
    sys.exit(code)


@cli.command()
@click.argument("run")
@_database_options
@click.option(
    "--html",
    "html",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the report as one HTML file.",
)
def report(
    run: str,
    config_path: str | None,
    database_url: str | None,
    data_dir: str | None,
    html: str | None,
) -> None:
    """Print the run's report, or write it as one HTML file."""
    from graygate.report_command import report_command

    with _errors(), _database(config_path, database_url, data_dir) as handle:
        code = _with_engine(
            handle.url, lambda engine: report_command(engine, run, html=html, out=sys.stdout)
        )
    sys.exit(code)


def _with_engine(url: str, fn: Callable[[Any], Awaitable[int]]) -> int:
    from store.engine import create_engine

    async def go() -> int:
        engine = create_engine(url, pool_size=2)
        try:
            return await fn(engine)
        finally:
            await engine.dispose()

    return run_async(go)


@cli.group(name="config")
def config_group() -> None:
    """Configuration: validate a file."""


@config_group.command(name="check")
@_config_option
def config_check(config_path: str | None) -> None:
    """Validate graygate.yaml (with GRAYGATE_* overrides) and print the result."""
    if config_path is None:
        _fail(EXIT_CONFIG, "config error: no configuration file: pass -c graygate.yaml")
    with _errors():
        from diff.rules import RuleBook

        cfg = _load(config_path)
        RuleBook.from_config(cfg.compare)
        import yaml

        from config.censor import censor_config

        data = censor_config(cfg.model_dump(mode="json"))
        click.echo(yaml.safe_dump(data, sort_keys=False), nl=False)


@cli.command()
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds of traffic to send through the proxy.",
)
@click.option(
    "--fault",
    default=None,
    metavar="NAME[=VALUE]",
    help="Plant one fault in the canary: rounding, timestamp_format, item_order, "
    "stock_deduction[=0.2], latency[=20ms], goroutine_leak, gc_pressure[=20ms], "
    "pprof_on_serving_port, stock_write[=0.2].",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=50.0,
    show_default=True,
    help="Requests per second.",
)
@_data_dir_option
@_db_option
@click.option(
    "--keep-running",
    is_flag=True,
    help="Keep everything running after the verdict (the admin URL shows the report); "
    "Ctrl-C stops it.",
)
@click.option(
    "--standin",
    is_flag=True,
    help="Use the Python stand-in for the canary even when `go` is on PATH.",
)
def demo(
    duration: float,
    fault: str | None,
    rate: float,
    data_dir: str | None,
    database_url: str | None,
    keep_running: bool,
    standin: bool,
) -> None:
    """Run a demo primary and canary behind graygate, send traffic, print the verdict.

    Builds the Go canary when `go` is on PATH (else the Python stand-in), starts an
    embedded PostgreSQL when no database is configured, runs `graygate serve`, sends
    orders traffic, waits for the diff workers, prints the verdict and writes the HTML
    report to DATA_DIR/reports/RUN.html.

    \b
    Exit codes: 0 GO, 1 NO_GO, 2 INCONCLUSIVE (as `graygate verdict`);
    3 the demo ran but no verdict could be read; 4 the demo failed;
    130/143 interrupted (SIGINT/SIGTERM). Everything it started is stopped.
    """
    from graygate.demo import run_demo

    sys.exit(
        run_demo(
            duration=duration,
            fault=fault,
            data_dir=Path(data_dir) if data_dir else None,
            database_url=database_url or os.environ.get("GRAYGATE_DATABASE_URL") or None,
            rate=rate,
            keep_running=keep_running,
            use_go=False if standin else None,
            out=sys.stdout,
        )
    )


governance_cli.register(
    cli, governance_cli.Helpers(_database_options, _database, _errors, _with_engine)
)
cli.add_command(replay_cli)


def main() -> None:
    cli(prog_name="graygate")


if __name__ == "__main__":
    main()
