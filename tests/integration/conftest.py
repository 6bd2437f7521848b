"""A running Core on a fresh database, a real broker and a simulated fleet unique to the test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio

from proveniq_core import db
from proveniq_core.api.app import create_app
from proveniq_core.config import Settings
from proveniq_core.ledger import assets, keys
from proveniq_core.locker.simulator import LatencyProfile, LockerFleet, fleet_specs
from proveniq_core.service import Core, register_fleet, running
from tests.conftest import unique_prefix

TENANT = "acme"


@asynccontextmanager
async def core_running(
    database_url: str, mqtt_url: str, home: Path, **overrides: Any
) -> AsyncIterator[Core]:
    """A running Core with ``Settings`` overrides and a 3-locker fleet registered to TENANT."""
    fields: dict[str, Any] = {"poll_interval": 0.2, "link_sync_budget_ms": 2000} | overrides
    settings = Settings(home=home, database_url=database_url, mqtt_url=mqtt_url, **fields)
    async with running(settings) as c:
        fleet = LockerFleet(mqtt_url, fleet_specs(3, unique_prefix()), LatencyProfile.instant())
        await fleet.start()
        c.fleet = fleet
        try:
            await register_fleet(c.pool, fleet, TENANT)
            yield c
        finally:
            await fleet.stop()


@asynccontextmanager
async def api_client(core: Core, key: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the app of ``core``, authenticated with ``key``."""
    transport = httpx.ASGITransport(app=create_app(core))
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://core.test",
        headers={"Authorization": f"Bearer {key}"},
    ) as http:
        yield http


@pytest_asyncio.fixture
async def core(database_url: str, mqtt_url: str, tmp_path: Path) -> AsyncIterator[Core]:
    async with core_running(database_url, mqtt_url, tmp_path) as c:
        yield c


@pytest_asyncio.fixture
async def api_key(core: Core) -> str:
    return await keys.create_key(core.pool, TENANT, keys.SCOPES, name="test admin")


@pytest_asyncio.fixture
async def client(core: Core, api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(core, api_key) as http:
        yield http


def first_ref(core: Core) -> str:
    assert core.fleet is not None
    return core.fleet.devices[0].ref


async def new_asset(pool: db.Pool) -> str:
    """A new pending asset of tenant acme, at a locker of its own; its id."""
    asset_id = str(uuid.uuid4())
    async with db.transaction(pool) as conn:
        await keys.ensure_tenant(conn, "acme")
        await assets.register_locker(
            conn,
            tenant_id="acme",
            locker_ref=f"l-{asset_id[:8]}",
            lat=1.0,
            lon=2.0,
            geofence_m=50,
            actor="test",
        )
        await assets.create(
            conn,
            asset_id=asset_id,
            tenant_id="acme",
            name="a",
            category="watch",
            locker_ref=f"l-{asset_id[:8]}",
            saga_id=None,
            actor="test",
        )
    return asset_id
