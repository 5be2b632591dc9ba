"""Governance commands: ``graygate waiver add|list|revoke`` (and, as they land, ``runs``
and ``rejudge``).

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

__all__ = ["MAX_DURATION_S", "Helpers", "parse_duration", "register"]

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


def register(cli: click.Group, helpers: Helpers) -> None:
    """Add the governance commands to ``cli``."""
    cli.add_command(_waiver_group(helpers))
