"""Governance commands: ``graygate waiver add|list|revoke``, ``graygate runs
list|close|delete|prune|reap``, ``graygate rejudge RUN``.

``graygate.cli`` registers them with one call, :func:`register`, handing over its own
helpers (how a command finds its database, how errors become exit codes), so this module
never imports the CLI module (no cycle) and the CLI keeps one way of doing each.
"""

from __future__ import annotations

import getpass
import logging
import re
import sys
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any

import click
import orjson

__all__ = ["MAX_DURATION_S", "Helpers", "parse_duration", "register", "start_reaper"]

logger = logging.getLogger(__name__)

# The longest --expires / --older-than accepted: ten years.
MAX_DURATION_S = 10 * 366 * 86_400

_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 7 * 86_400}
_DURATION = re.compile(r"^\s*(\d{1,9}(?:\.\d{1,6})?)\s*([smhdw])\s*$")

_KINDS = ("value", "type", "missing", "extra", "order", "length", "status", "header", "body")


def parse_duration(text: str, *, name: str = "duration") -> float:
    """``"14d"``, ``"12h"``, ``"30m"``, ``"90s"``, ``"2w"`` as seconds, more than 0 and at
    most ten years; ValueError names the value and what is expected."""
    m = _DURATION.match(text)
    if m is None:
        raise ValueError(
            f"{name} {text!r}: expected a number and a unit, e.g. 14d, 12h, 30m, 90s, 2w"
        )
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if not 0 < seconds <= MAX_DURATION_S:
        raise ValueError(f"{name} {text!r}: must be more than 0 and at most 3660d")
    return seconds


def _duration_option(value: str | None, name: str) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value, name=name)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


class Helpers:
    """What the CLI lends its governance commands."""

    def __init__(
        self,
        database_options: Callable[[Callable[..., None]], Callable[..., None]],
        database: Callable[[str | None, str | None, str | None], AbstractContextManager[Any]],
        errors: Callable[[], AbstractContextManager[None]],
        with_engine: Callable[[str, Callable[[Any], Awaitable[int]]], int],
    ) -> None:
        self.database_options = database_options
        self.database = database
        self.errors = errors
        self.with_engine = with_engine

    def run(
        self,
        config_path: str | None,
        database_url: str | None,
        data_dir: str | None,
        fn: Callable[[Any], Awaitable[int]],
    ) -> int:
        with self.errors(), self.database(config_path, database_url, data_dir) as handle:
            return self.with_engine(handle.url, fn)


def _echo_json(data: Any) -> None:
    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def _waiver_line(w: Any) -> str:
    kind = f" kind={w.kind}" if w.kind else ""
    scope = f" scope={w.scope}" if w.scope else f" run={w.run}"
    expires = f" expires={w.expires_at.isoformat(timespec='seconds')}" if w.expires_at else ""
    return (
        f"{w.id:>5} {w.state:<8} {w.endpoint} {w.field}{kind}{scope}{expires} "
        f"by={w.created_by} ({w.source}): {w.reason}"
    )


def _waiver_group(h: Helpers) -> click.Group:
    @click.group(name="waiver")
    def waiver() -> None:
        """Waivers: accepted differences, with an append-only audit trail."""

    @waiver.command(name="add")
    @click.argument("run")
    @click.option("--endpoint", required=True, help="Endpoint glob, e.g. 'GET /api/orders/{id}'.")
    @click.option("--field", "field_", required=True, help="Field path, e.g. '$.items[*].price'.")
    @click.option("--kind", type=click.Choice(_KINDS), default=None, help="Only this kind.")
    @click.option("--reason", required=True, help="Why the difference is accepted.")
    @click.option("--by", default=None, help="Who accepts it (default: the OS user).")
    @click.option("--expires", default=None, help="Stops applying after this long: 14d, 12h.")
    @click.option("--scope", default=None, help="Apply to every run whose name matches this glob.")
    @h.database_options
    def add(
        run: str,
        endpoint: str,
        field_: str,
        kind: str | None,
        reason: str,
        by: str | None,
        expires: str | None,
        scope: str | None,
        config_path: str | None,
        database_url: str | None,
        data_dir: str | None,
    ) -> None:
        """Waive the canary's differences at FIELD of ENDPOINT in RUN."""
        from config.schema import WaiverSpec
        from diff.paths import compile_path
        from graygate.vocabulary import WaiverSource
        from store.waivers import add_waiver

        expires_s = _duration_option(expires, "--expires")
        try:
            WaiverSpec(endpoint=endpoint, field=field_, reason=reason, owner=by or "x", scope=scope)
            if field_.startswith("$"):
                compile_path(field_)
        except ValueError as exc:
            first = str(exc).splitlines()
            raise click.BadParameter(" ".join(first[-2:]) if first else str(exc)) from None

        async def go(engine: Any) -> int:
            try:
                w = await add_waiver(
                    engine,
                    run,
                    endpoint=endpoint,
                    field=field_,
                    kind=kind,
                    reason=reason,
                    by=by or _os_user(),
                    source=WaiverSource.CLI,
                    scope=scope,
                    expires_in_s=expires_s,
                )
            except ValueError as exc:
                raise click.BadParameter(str(exc)) from None
            click.echo(f"waiver {w.id} added: {_waiver_line(w).strip()}")
            return 0

        sys.exit(h.run(config_path, database_url, data_dir, go))

    @waiver.command(name="list")
    @click.argument("run", required=False)
    @click.option("--json", "as_json", is_flag=True, help="Print JSON, with each audit trail.")
    @click.option("--all", "show_all", is_flag=True, help="Revoked and expired ones too.")
    @h.database_options
    def list_(
        run: str | None,
        as_json: bool,
        show_all: bool,
        config_path: str | None,
        database_url: str | None,
        data_dir: str | None,
    ) -> None:
        """The waivers of RUN (its own and scoped ones matching it), or of every run."""
        from store.waivers import list_waivers, waiver_trail

        async def go(engine: Any) -> int:
            rows = await list_waivers(engine, run, include_inactive=show_all)
            if as_json:
                trail = await waiver_trail(engine, [w.id for w in rows])
                by_id: dict[int, list[dict[str, Any]]] = {}
                for e in trail:
                    by_id.setdefault(e.waiver_id, []).append(e.as_dict())
                _echo_json(
                    {"waivers": [{**w.as_dict(), "trail": by_id.get(w.id, [])} for w in rows]}
                )
                return 0
            if not rows:
                click.echo(
                    "no waivers" + ("" if show_all else " (--all shows revoked and expired)")
                )
            for w in rows:
                click.echo(_waiver_line(w))
            return 0

        sys.exit(h.run(config_path, database_url, data_dir, go))

    @waiver.command(name="revoke")
    @click.argument("waiver_id", metavar="ID", type=click.IntRange(1, 2**63 - 1))
    @click.option("--reason", required=True, help="Why it no longer applies.")
    @click.option("--by", default=None, help="Who revokes it (default: the OS user).")
    @h.database_options
    def revoke(
        waiver_id: int,
        reason: str,
        by: str | None,
        config_path: str | None,
        database_url: str | None,
        data_dir: str | None,
    ) -> None:
        """Revoke waiver ID: it stops applying at the next evaluation."""
        from store.waivers import revoke_waiver

        async def go(engine: Any) -> int:
            try:
                w = await revoke_waiver(engine, waiver_id, reason=reason, by=by or _os_user())
            except ValueError as exc:
                raise click.BadParameter(str(exc)) from None
            click.echo(f"waiver {w.id} revoked by {w.revoked_by}: {reason}")
            return 0

        sys.exit(h.run(config_path, database_url, data_dir, go))

    return waiver


def _runs_group(h: Helpers) -> click.Group:
    @click.group(name="runs")
    def runs() -> None:
        """Runs: list, close, delete, prune."""

    @runs.command(name="list")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @h.database_options
    def list_(
        as_json: bool, config_path: str | None, database_url: str | None, data_dir: str | None
    ) -> None:
        """Every run: created, last exchange, counts, latest verdict, size on disk."""
        from graygate.formatting import byte_size, when
        from store.lifecycle import list_run_details
        from store.trash import trash_summary

        async def go(engine: Any) -> int:
            rows = await list_run_details(engine)
            async with engine.connect() as conn:
                bin_ = await trash_summary(conn)
            if as_json:
                _echo_json({"runs": [r.as_dict() for r in rows], "reclaiming": bin_.as_dict()})
                return 0
            if bin_.tables:
                more = len(bin_.runs) - 5
                names = ", ".join(bin_.runs[:5]) + (f" and {more} more" if more > 0 else "")
                click.echo(
                    f"reclaiming {byte_size(bin_.bytes)} of deleted run(s) {names} "
                    "(`graygate runs reap` drops them now)"
                )
            if not rows:
                click.echo("no runs")
            for r in rows:
                closed = f" closed {when(r.closed_at)}" if r.closed_at else ""
                click.echo(
                    f"{r.name}  created {when(r.created_at)}  last exchange "
                    f"{when(r.last_exchange_at) if r.last_exchange_at else '-'}  "
                    f"{r.exchanges:,} exchanges ({r.judged:,} judged, {r.unrecorded:,} "
                    f"unrecorded)  verdict {r.verdict or '-'}  {byte_size(r.size_bytes)}{closed}"
                )
                for change in r.version_changes:
                    click.echo(f"  {change}")
            return 0

        sys.exit(h.run(config_path, database_url, data_dir, go))

    @runs.command(name="close")
    @click.argument("run")
    @h.database_options
    def close(
        run: str, config_path: str | None, database_url: str | None, data_dir: str | None
    ) -> None:
        """Accept no more exchanges into RUN (a proxy still feeding it counts them as
        run_closed losses) and stop its runtime sampling."""
        from store.lifecycle import close_run

        async def go(engine: Any) -> int:
            at = await close_run(engine, run)
            click.echo(f"run {run} closed at {at.isoformat(timespec='seconds')}")
            return 0

        sys.exit(h.run(config_path, database_url, data_dir, go))

    @runs.command(name="delete")
    @click.argument("run")
    @click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
    @click.option(
        "--wait", is_flag=True, help="Return when the disk space is reclaimed, not before."
    )
    @h.database_options
    def delete(
        run: str,
        yes: bool,
        wait: bool,
        config_path: str | None,
        database_url: str | None,
        data_dir: str | None,
    ) -> None:
        """Delete RUN and everything recorded for it (its waivers' audit trail stays).

        Returns when the run is gone: nothing sees it any more. Its disk space is
        reclaimed just after, by a reaper started in the background (with --wait, by this
        command before it returns)."""
        from store.lifecycle import delete_run

        if not yes:
            if not sys.stdin.isatty():
                click.echo(
                    f"graygate: run {run} not deleted: pass --yes (no terminal to ask)", err=True
                )
                sys.exit(2)
            if not click.confirm(f"delete run {run} and all its exchanges?"):
                click.echo(f"graygate: run {run} not deleted", err=True)
                sys.exit(1)

        async def go(engine: Any) -> int:
            d = await delete_run(engine, run)
            about = "" if d.exact else "about "
            click.echo(f"run {run} deleted ({about}{d.exchanges:,} exchanges)")
            await _reclaim(
                engine, [d.run_id], d.trash_bytes, wait, config_path, database_url, data_dir
            )
            return 0

        sys.exit(h.run(config_path, database_url, data_dir, go))

    @runs.command(name="prune")
    @click.option("--older-than", required=True, help="Last activity older than this: 30d, 12h.")
    @click.option(
        "--keep-last",
        type=click.IntRange(0, 1_000_000),
        default=0,
        show_default=True,
        help="Never prune the N most recently created runs.",
    )
    @click.option("--dry-run", is_flag=True, help="Print what would be deleted; delete nothing.")
    @click.option(
        "--wait", is_flag=True, help="Return when the disk space is reclaimed, not before."
    )
    @h.database_options
    def prune(
        older_than: str,
        keep_last: int,
        dry_run: bool,
        wait: bool,
        config_path: str | None,
        database_url: str | None,
        data_dir: str | None,
    ) -> None:
        """Delete the runs idle for longer than --older-than (their disk space is reclaimed
        just after, as with `runs delete`)."""
        from store.lifecycle import delete_runs, prune_candidates

        seconds = _duration_option(older_than, "--older-than")
        assert seconds is not None

        async def go(engine: Any) -> int:
            names = await prune_candidates(engine, older_than_s=seconds, keep_last=keep_last)
            if dry_run:
                for name in names:
                    click.echo(f"would delete {name}")
                click.echo(f"{len(names)} run(s) would be deleted (dry run)")
                return 0
            deleted = await delete_runs(engine, names)
            for name, d in deleted.items():
                about = "" if d.exact else "about "
                click.echo(f"deleted {name} ({about}{d.exchanges:,} exchanges)")
            click.echo(f"{len(deleted)} run(s) deleted")
            if deleted:
                await _reclaim(
                    engine,
                    [d.run_id for d in deleted.values()],
                    sum(d.trash_bytes for d in deleted.values()),
                    wait,
                    config_path,
                    database_url,
                    data_dir,
                )
            return 0

        sys.exit(h.run(config_path, database_url, data_dir, go))

    @runs.command(name="reap")
    @click.option("--quiet", is_flag=True, help="Print nothing (as started by `runs delete`).")
    @h.database_options
    def reap(
        quiet: bool, config_path: str | None, database_url: str | None, data_dir: str | None
    ) -> None:
        """Drop what deleted runs left in the trash, giving their disk space back.

        `runs delete` and `runs prune` start this in the background, and the diff workers
        sweep the trash every minute: run it by hand to reclaim the space at once."""
        from graygate.formatting import byte_size
        from store.trash import reap_trash

        async def go(engine: Any) -> int:
            done = await reap_trash(engine)
            if not quiet:
                click.echo(
                    f"reclaimed {byte_size(done.bytes)} ({done.tables} table(s)) "
                    f"in {done.seconds:.1f}s"
                    if done.tables
                    else "nothing to reclaim"
                )
            return 0

        sys.exit(h.run(config_path, database_url, data_dir, go))

    return runs


async def _reclaim(
    engine: Any,
    run_ids: list[int],
    size: int,
    wait: bool,
    config_path: str | None,
    database_url: str | None,
    data_dir: str | None,
) -> None:
    """After a delete: drop the runs' trashed partitions here (``wait``), or start
    ``graygate runs reap`` detached and return."""
    from graygate.formatting import byte_size

    if wait:
        from store.trash import wait_reaped

        done = await wait_reaped(engine, run_ids)
        click.echo(f"reclaimed {byte_size(size)} in {done:.1f}s")
        return
    if size == 0:
        return
    try:
        start_reaper(config_path, database_url, data_dir)
    except OSError as exc:
        logger.warning("could not start the reaper (%s); the diff workers' sweep will", exc)
    click.echo(f"reclaiming {byte_size(size)} in the background")


def start_reaper(config_path: str | None, database_url: str | None, data_dir: str | None) -> Any:
    """Start ``graygate runs reap --quiet`` in a session of its own (it outlives this
    process, and a Ctrl-C here does not reach it), on the same database: the URL passes
    in the environment, not the command line (no password in ``ps``). Returns the Popen."""
    import os
    import subprocess

    argv = [sys.executable, "-m", "graygate", "runs", "reap", "--quiet"]
    env = dict(os.environ)
    if database_url is not None:
        env["GRAYGATE_DATABASE_URL"] = database_url  # and no -c: its URL would come first
        env.pop("GRAYGATE_CONFIG", None)
    elif config_path is not None:
        argv += ["-c", config_path]
    if data_dir is not None:
        argv += ["--data-dir", data_dir]
    return subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


# How often `graygate rejudge` reads the job's progress while the workers judge.
_POLL_S = 0.5


def _rejudge_command(h: Helpers) -> click.Command:
    @click.command(name="rejudge")
    @click.argument("run")
    @h.database_options
    @click.option(
        "--here",
        is_flag=True,
        help="Judge in this process instead of waiting for the background workers.",
    )
    @click.option("--no-wait", is_flag=True, help="Queue the re-judgement and exit.")
    @click.option(
        "--timeout",
        type=click.FloatRange(1.0, 86_400.0),
        default=3_600.0,
        show_default=True,
        help="Seconds to wait for the workers.",
    )
    @click.option("--by", default=None, help="Who asks (default: the OS user).")
    @click.option("--history", is_flag=True, help="Print which rules judged which verdicts.")
    @click.option("--json", "as_json", is_flag=True, help="With --history: JSON.")
    def rejudge(
        run: str,
        config_path: str | None,
        database_url: str | None,
        data_dir: str | None,
        here: bool,
        no_wait: bool,
        timeout: float,
        by: str | None,
        history: bool,
        as_json: bool,
    ) -> None:
        """Re-compare every exchange of RUN under -c FILE's compare rules (the run's stored
        rules without -c). The verdict keeps the old judgement until the new one is
        complete, then switches at once. Exit 0 done (or queued with --no-wait), 2 still
        running at --timeout, 3 cannot answer."""
        import asyncio
        import time

        from store import rejudge as store_rejudge

        compare: dict[str, Any] | None = None
        if config_path is not None and not history:
            from config.load import load_config
            from diff.rules import RuleBook

            with h.errors():
                cfg = load_config(config_path)
                RuleBook.from_config(cfg.compare)  # a bad rule fails here
            compare = cfg.compare.model_dump(mode="json")

        async def show_history(engine: Any) -> int:
            eras = await store_rejudge.config_history(engine, run)
            if as_json:
                _echo_json({"run": run, "history": [e.as_dict() for e in eras]})
                return 0
            for e in eras:
                since = e.since.isoformat(timespec="seconds") if e.since else "the start"
                name = f"rejudge {e.rejudge_id}" if e.rejudge_id else "recorded rules"
                verdicts = ", ".join(v for _, v in e.verdicts) or "no verdict"
                click.echo(f"{name} (from {since}): {verdicts}")
            return 0

        async def go(engine: Any) -> int:
            from diff.worker import rejudge_pending

            job = await store_rejudge.start_rejudge(engine, run, compare, by=by or _os_user())
            click.echo(f"rejudge {job.id} of run {run}: {job.total:,} exchanges queued")
            if no_wait:
                return 0
            if here:
                await rejudge_pending(engine, job.run_id)
            deadline = time.monotonic() + timeout
            with click.progressbar(length=max(job.total, 1), label="re-judging") as bar:
                done = 0
                while True:
                    now = await store_rejudge.job_progress(engine, job.id)
                    bar.update(max(0, now.judged - done))
                    done = now.judged
                    if now.completed_at is not None or now.cancelled_at is not None:
                        break
                    if time.monotonic() >= deadline:
                        click.echo(
                            f"graygate: rejudge {job.id} still running after {timeout:g} s "
                            f"({now.judged:,}/{now.total:,}); the verdict keeps the old "
                            "judgement until it completes",
                            err=True,
                        )
                        return 2
                    await asyncio.sleep(_POLL_S)
            if now.cancelled_at is not None:
                click.echo(f"graygate: rejudge {job.id} was replaced by a newer one", err=True)
                return 1
            click.echo(f"rejudge {job.id} complete: the verdict now reads the new judgement")
            return 0

        sys.exit(h.run(config_path, database_url, data_dir, show_history if history else go))

    return rejudge


def register(cli: click.Group, helpers: Helpers) -> None:
    """Add the governance commands to ``cli``."""
    cli.add_command(_waiver_group(helpers))
    cli.add_command(_runs_group(helpers))
    cli.add_command(_rejudge_command(helpers))
