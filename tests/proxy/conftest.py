"""Fixtures of the proxy tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import ClientSession


@pytest.fixture
async def client() -> AsyncIterator[ClientSession]:
    async with ClientSession(auto_decompress=False) as session:
        yield session
