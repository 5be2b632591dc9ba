"""The migrations stairway: every revision upgrades, downgrades and upgrades again;
and the tables in store.tables agree with the migrations (``alembic check``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from store import migrate


async def test_stairway(make_database: Callable[[], Awaitable[str]]) -> None:
    url = await make_database()
    revisions = migrate.revisions()
    assert revisions, "no migrations found"
    previous = "base"
    for rev in revisions:
        await asyncio.to_thread(migrate.upgrade, url, rev)
        await asyncio.to_thread(migrate.downgrade, url, previous)
        await asyncio.to_thread(migrate.upgrade, url, rev)
        previous = rev
    assert await asyncio.to_thread(migrate.check, url) is None


async def test_head_is_the_last_revision() -> None:
    assert migrate.head_revision() == migrate.revisions()[-1]
