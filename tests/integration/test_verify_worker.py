"""The verify worker's one-item step, driven by hand with no background workers running."""

from __future__ import annotations

from pathlib import Path

import httpx

from proveniq_core.api.app import create_app
from proveniq_core.config import Settings
from proveniq_core.ledger import keys
from proveniq_core.locker.simulator import LatencyProfile, LockerFleet, fleet_specs
from proveniq_core.service import register_fleet, running
from proveniq_core.verify.worker import VerifyWorker
from tests.conftest import unique_prefix


async def test_process_next_settles_one_verification_then_reports_idle(
    database_url: str, mqtt_url: str, tmp_path: Path
) -> None:
    """With role=api nothing verifies by itself; process_next() verifies one asset, then is idle."""
    settings = Settings(home=tmp_path, database_url=database_url, mqtt_url=mqtt_url, role="api")
    async with running(settings) as core:
        fleet = LockerFleet(mqtt_url, fleet_specs(1, unique_prefix()), LatencyProfile.instant())
        await fleet.start()
        try:
            await register_fleet(core.pool, fleet, "acme")
            key = await keys.create_key(core.pool, "acme", ["assets:read", "assets:write"])
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=create_app(core)),
                base_url="http://t",
                headers={"Authorization": f"Bearer {key}"},
            ) as http:
                body = {"name": "a", "category": "watch", "lockerRef": fleet.devices[0].ref}
                asset_id = (await http.post("/api/assets", json=body)).json()["assetId"]
                before = (await http.get(f"/api/assets/{asset_id}")).json()
                assert before["status"] == "linked"
                assert before["verification"]["status"] == "queued"

                worker = VerifyWorker(core.pool, core.gateway, core.evidence, settings)
                assert await worker.process_next() is True
                assert await worker.process_next() is False
                after = (await http.get(f"/api/assets/{asset_id}")).json()
        finally:
            await fleet.stop()
    assert after["status"] == "verified"
    assert after["verification"]["status"] == "verified"
    assert fleet.devices[0].commands["collect_evidence"] == 1
