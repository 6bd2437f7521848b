"""A running Core on a fresh database, a real broker and a simulated fleet unique to the test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest_asyncio

from proveniq_core.api.app import create_app
from proveniq_core.config import Settings
from proveniq_core.ledger import keys
from proveniq_core.locker.simulator import LatencyProfile, LockerFleet, fleet_specs
from proveniq_core.service import Core, register_fleet, running
from tests.conftest import unique_prefix

TENANT = "acme"


@pytest_asyncio.fixture
async def core(database_url: str, mqtt_url: str, tmp_path: Path) -> AsyncIterator[Core]:
    settings = Settings(
        home=tmp_path,
        database_url=database_url,
        mqtt_url=mqtt_url,
        poll_interval=0.2,
        link_sync_budget_ms=2000,
    )
    async with running(settings) as c:
        fleet = LockerFleet(mqtt_url, fleet_specs(3, unique_prefix()), LatencyProfile.instant())
        await fleet.start()
        c.fleet = fleet
        try:
            await register_fleet(c.pool, fleet, TENANT)
            yield c
        finally:
            await fleet.stop()


@pytest_asyncio.fixture
async def api_key(core: Core) -> str:
    return await keys.create_key(core.pool, TENANT, keys.SCOPES, name="test admin")


@pytest_asyncio.fixture
async def client(core: Core, api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(core))
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://core.test",
        headers={"Authorization": f"Bearer {api_key}"},
    ) as http:
        yield http


def first_ref(core: Core) -> str:
    assert core.fleet is not None
    return core.fleet.devices[0].ref
