"""Runs: created by the first process that starts one, shared by every process that feeds it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from config.censor import censor_config, censor_url
from graygate.errors import UnknownRun
from store.failures import store_errors
from store.partitions import ensure_partitions
from store.tables import runs
from store.waivers import sync_config_waivers

__all__ = ["ensure_run", "get_run_id"]


async def ensure_run(
    engine: AsyncEngine,
    name: str,
    *,
    primary_url: str | None,
    canary_url: str | None,
    config_json: Mapping[str, Any] | str | None = None,
    primary_version: str | None = None,
    canary_version: str | None = None,
) -> int:
    """The id of run ``name``, created if new; its URLs and configuration are updated to the
    caller's (the latest process to start judges the run). What is stored is censored
    (``config.censor``): no password, token or URL userinfo reaches ``runs``.

    One statement (``INSERT ... ON CONFLICT (name) DO UPDATE ... RETURNING id``): safe when
    many processes on many hosts start the same run at once; then the run's partitions
    (``store.partitions``), made once whoever asks. Versions are kept when the
    caller does not know them. Raises StoreUnavailable when the database cannot be reached.
    """
    if isinstance(config_json, str):
        config: Any = orjson.loads(config_json)
    else:
        config = dict(config_json) if config_json is not None else {}
    config = censor_config(config)
    versions = config.get("versions") if isinstance(config, dict) else None
    if isinstance(versions, dict):
        # The configuration's versions (versions: {primary, canary}, or
        # GRAYGATE_VERSIONS_CANARY) when the caller names none.
        primary_version = primary_version or versions.get("primary")
        canary_version = canary_version or versions.get("canary")
    stmt = pg_insert(runs).values(
        name=name,
        primary_url=None if primary_url is None else censor_url(primary_url),
        canary_url=None if canary_url is None else censor_url(canary_url),
        primary_version=primary_version,
        canary_version=canary_version,
        config=config,
    )
    upsert = stmt.on_conflict_do_update(
        index_elements=[runs.c.name],
        set_={
            "primary_url": stmt.excluded.primary_url,
            "canary_url": stmt.excluded.canary_url,
            "primary_version": sa.func.coalesce(
                stmt.excluded.primary_version, runs.c.primary_version
            ),
            "canary_version": sa.func.coalesce(stmt.excluded.canary_version, runs.c.canary_version),
            "config": stmt.excluded.config,
            "updated_at": sa.func.now(),
        },
    ).returning(runs.c.id)
    async with store_errors(engine), engine.begin() as conn:
        run_id = (await conn.execute(upsert)).scalar_one()
        if isinstance(config, dict) and "waivers" in config:
            # The configuration's standing exemptions (reviewed as code), in the trail as
            # "config"; this transaction holds the run's row lock.
            await sync_config_waivers(conn, int(run_id), name, config.get("waivers") or [])
    # Its partitions, in a transaction of their own: attaching one locks the runs table
    # (the partition's foreign key), which two starts holding their run rows would
    # deadlock on.
    async with store_errors(engine):
        await ensure_partitions(engine, [int(run_id)])
    return int(run_id)


async def get_run_id(engine: AsyncEngine, name: str) -> int:
    """The id of run ``name``; UnknownRun when there is none, StoreUnavailable when the
    database cannot be reached."""
    async with store_errors(engine), engine.connect() as conn:
        run_id = await conn.scalar(sa.select(runs.c.id).where(runs.c.name == name))
    if run_id is None:
        raise UnknownRun(name)
    return int(run_id)
