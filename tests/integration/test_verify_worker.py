"""The verify worker's one-item step, driven by hand with no background workers running."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from proveniq_core import db
from proveniq_core.api.app import create_app
from proveniq_core.config import Settings
from proveniq_core.ledger import keys
from proveniq_core.locker.simulator import LatencyProfile, LockerFleet, fleet_specs
from proveniq_core.service import Core, register_fleet, running
from proveniq_core.verify.worker import VerifyWorker
from tests.conftest import unique_prefix
from tests.helpers import eventually


@asynccontextmanager
async def api_only(
    database_url: str, mqtt_url: str, home: Path, lockers: int
) -> AsyncIterator[tuple[Core, LockerFleet, httpx.AsyncClient]]:
    """A Core with role=api (nothing verifies by itself), ``lockers`` instant simulated
    lockers of tenant acme, and a client with an acme key."""
    settings = Settings(home=home, database_url=database_url, mqtt_url=mqtt_url, role="api")
    async with running(settings) as core:
        specs = fleet_specs(lockers, unique_prefix())
        fleet = LockerFleet(mqtt_url, specs, LatencyProfile.instant())
        await fleet.start()
        try:
            await register_fleet(core.pool, fleet, "acme")
            key = await keys.create_key(core.pool, "acme", ["assets:read", "assets:write"])
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=create_app(core)),
                base_url="http://t",
                headers={"Authorization": f"Bearer {key}"},
            ) as http:
                yield core, fleet, http
        finally:
            await fleet.stop()


async def test_process_next_settles_one_verification_then_reports_idle(
    database_url: str, mqtt_url: str, tmp_path: Path
) -> None:
    """With role=api nothing verifies by itself; process_next() verifies one asset, then is idle."""
    async with api_only(database_url, mqtt_url, tmp_path, 1) as (core, fleet, http):
        body = {"name": "a", "category": "watch", "lockerRef": fleet.devices[0].ref}
        asset_id = (await http.post("/api/assets", json=body)).json()["assetId"]
        before = (await http.get(f"/api/assets/{asset_id}")).json()
        assert before["status"] == "linked"
        assert before["verification"]["status"] == "queued"

        worker = VerifyWorker(core.pool, core.gateway, core.evidence, core.settings)
        assert await worker.process_next() is True
        assert await worker.process_next() is False
        after = (await http.get(f"/api/assets/{asset_id}")).json()
    assert after["status"] == "verified"
    assert after["verification"]["status"] == "verified"
    assert fleet.devices[0].commands["collect_evidence"] == 1


async def test_due_verifications_are_claimed_together_up_to_the_limit(
    database_url: str, mqtt_url: str, tmp_path: Path
) -> None:
    """Three queued verifications: a claim of two takes two (collecting, under a lease), the
    next takes the one left, a third finds nothing; each claimed one is then verified."""
    async with api_only(database_url, mqtt_url, tmp_path, 3) as (core, fleet, http):
        ids = []
        for device in fleet.devices:
            body = {"name": "a", "category": "watch", "lockerRef": device.ref}
            ids.append((await http.post("/api/assets", json=body)).json()["assetId"])
        worker = VerifyWorker(core.pool, core.gateway, core.evidence, core.settings)
        first, second, third = await worker.claim(2), await worker.claim(5), await worker.claim(5)
        views = [(await http.get(f"/api/assets/{i}")).json() for i in ids]
        for job in first + second:
            await worker._process(job)
        after = [(await http.get(f"/api/assets/{i}")).json() for i in ids]
    assert (len(first), len(second), third) == (2, 1, [])
    assert {str(job["asset_id"]) for job in first + second} == set(ids)
    assert [v["verification"]["status"] for v in views] == ["collecting"] * 3
    assert [a["status"] for a in after] == ["verified"] * 3


async def test_while_registrations_have_a_backlog_verification_goes_one_at_a_time(
    database_url: str, mqtt_url: str, tmp_path: Path
) -> None:
    """Four queued verifications and a worker of concurrency 4 whose ``yield_to`` says a
    backlog of registrations comes first: it claims one at a time, yet verifies them all."""
    async with api_only(database_url, mqtt_url, tmp_path, 4) as (core, fleet, http):
        ids = []
        for device in fleet.devices:
            body = {"name": "a", "category": "watch", "lockerRef": device.ref}
            ids.append((await http.post("/api/assets", json=body)).json()["assetId"])
        worker = VerifyWorker(
            core.pool, core.gateway, core.evidence, core.settings, concurrency=4,
            yield_to=lambda: True,
        )  # fmt: skip
        asked: list[int] = []
        claim = worker.claim

        async def counted(limit: int) -> list[db.Row]:
            asked.append(limit)
            return await claim(limit)

        worker.claim = counted  # type: ignore[method-assign]
        waker = db.Waker(database_url)
        tasks = [asyncio.create_task(waker.run()), asyncio.create_task(worker.run(waker))]
        try:

            async def all_verified() -> bool:
                views = [(await http.get(f"/api/assets/{i}")).json() for i in ids]
                return all(v["status"] == "verified" for v in views)

            await eventually(all_verified, within=20)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert asked and set(asked) == {1}
