"""Verify end to end (docs/architecture.md §5): each analysis outcome, the evidence API, retries.

Evidence defects come from the simulator's ``bad_evidence`` fault (``POST /sim/faults``),
which spoils only ``collect_evidence`` answers, so the link before it is unaffected.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from proveniq_core.ledger import keys
from proveniq_core.locker.simulator import evidence_photo
from proveniq_core.service import Core
from tests.helpers import eventually
from tests.integration.conftest import api_client, core_running, first_ref

SETTLED = ("verified", "rejected", "manual_review", "failed")


async def register(client: httpx.AsyncClient, ref: str) -> str:
    resp = await client.post(
        "/api/assets", json={"name": "Omega Speedmaster", "category": "watch", "lockerRef": ref}
    )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["assetId"])


async def settled(client: httpx.AsyncClient, asset_id: str) -> dict[str, Any]:
    """The asset once its verification has an outcome."""

    async def check() -> dict[str, Any] | None:
        body: dict[str, Any] = (await client.get(f"/api/assets/{asset_id}")).json()
        return body if body["verification"]["status"] in SETTLED else None

    result: dict[str, Any] = await eventually(check)
    return result


async def spoil(client: httpx.AsyncClient, ref: str, defect: str) -> None:
    """The next evidence ``ref`` collects has ``defect``."""
    rule = {"lockerRef": ref, "fault": "bad_evidence", "defect": defect, "count": 1}
    resp = await client.post("/sim/faults", json=rule)
    assert resp.status_code == 201, resp.text


async def events_to(client: httpx.AsyncClient, *types: str) -> str:
    """Subscribe a (never answering: .invalid never resolves) endpoint to ``types``; its
    delivery log shows the events."""
    resp = await client.post(
        "/api/webhooks", json={"url": "https://receiver.invalid/hooks", "events": list(types)}
    )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["webhookId"])


async def delivered(client: httpx.AsyncClient, webhook_id: str, n: int) -> list[dict[str, Any]]:
    """The payloads of the first ``n`` events written for ``webhook_id``, oldest first."""

    async def check() -> list[dict[str, Any]] | None:
        items = (await client.get(f"/api/webhooks/{webhook_id}/deliveries")).json()["items"]
        return items if len(items) >= n else None

    items: list[dict[str, Any]] = await eventually(check)
    return sorted((i["payload"] for i in items), key=lambda p: str(p["timestamp"]))


@pytest.mark.parametrize(
    ("defect", "outcome", "reason"),
    [
        (None, "verified", None),
        ("gps_outside", "rejected", "outside its 100 m geofence"),
        ("low_accuracy", "manual_review", "too imprecise to place inside"),
        ("stale", "rejected", "evidence timestamp is"),
        ("blank", "rejected", "photo is blank"),
        ("undecodable", "rejected", "cannot be decoded"),
        ("hash_mismatch", "rejected", "does not match the device's hash"),
    ],
)
async def test_each_evidence_defect_reaches_its_outcome(
    core: Core, client: httpx.AsyncClient, defect: str | None, outcome: str, reason: str | None
) -> None:
    """Evidence spoiled one way ends with the outcome and the reason its check gives."""
    ref = first_ref(core)
    hook = await events_to(client, "verification.completed")
    if defect:
        await spoil(client, ref, defect)
    asset_id = await register(client, ref)
    asset = await settled(client, asset_id)
    assert asset["status"] == outcome
    assert asset["verification"]["status"] == outcome
    reasons = asset["verification"]["reasons"]
    if reason is None:
        assert reasons == []
    else:
        assert len(reasons) == 1 and reason in reasons[0], reasons
    [event] = await delivered(client, hook, 1)
    assert event["type"] == "verification.completed"
    assert event["data"] == {
        "assetId": asset_id,
        "verificationId": asset["verification"]["verificationId"],
        "outcome": outcome,
        "reasons": reasons,
    }


async def test_a_near_duplicate_of_another_assets_photo_is_rejected(
    core: Core, client: httpx.AsyncClient
) -> None:
    """The same picture re-encoded (other bytes) for a second asset: rejected as a duplicate."""
    ref = first_ref(core)
    first = await settled(client, await register(client, ref))
    assert first["status"] == "verified"
    await spoil(client, ref, "duplicate")
    second_id = await register(client, ref)
    second = await settled(client, second_id)
    assert second["status"] == "rejected"
    [reason] = second["verification"]["reasons"]
    assert "near-duplicate of another asset's evidence" in reason
    [a] = (await client.get(f"/api/assets/{first['assetId']}/evidence")).json()["items"]
    [b] = (await client.get(f"/api/assets/{second_id}/evidence")).json()["items"]
    assert a["sha256"] != b["sha256"]


async def test_evidence_is_listed_and_served_to_its_tenant_only(
    core: Core, client: httpx.AsyncClient
) -> None:
    """The list gives hash, type, size, time, GPS and a link; the link serves the photo's
    bytes; another tenant, an unknown hash or a key without assets:read get nothing."""
    asset_id = await register(client, first_ref(core))
    assert (await settled(client, asset_id))["status"] == "verified"
    listed = await client.get(f"/api/assets/{asset_id}/evidence")
    assert listed.status_code == 200
    [item] = listed.json()["items"]
    photo = evidence_photo(asset_id)
    sha = hashlib.sha256(photo).hexdigest()
    assert item["sha256"] == sha
    assert item["contentType"] == "image/jpeg"
    assert item["size"] == len(photo)
    assert item["capturedAt"] is not None
    spec = core.fleet.devices[0].spec  # type: ignore[union-attr]
    assert item["gps"]["lat"] == pytest.approx(spec.lat, abs=1e-4)
    assert item["gps"]["lon"] == pytest.approx(spec.lon, abs=1e-4)
    assert item["gps"]["accuracyM"] == 5.0
    link = item["links"]["content"]
    assert link == f"/api/assets/{asset_id}/evidence/{sha}"

    served = await client.get(link)
    assert served.status_code == 200
    assert served.headers["content-type"] == "image/jpeg"
    assert served.content == photo
    missing = await client.get(f"/api/assets/{asset_id}/evidence/{'0' * 64}")
    assert missing.status_code == 404

    other = await keys.create_key(core.pool, "globex", keys.SCOPES)
    async with api_client(core, other) as http:
        for path in (f"/api/assets/{asset_id}/evidence", link):
            got = await http.get(path)
            assert got.status_code == 404, path
            assert got.json()["error"]["code"] == "E_NOT_FOUND"
    reviewer = await keys.create_key(core.pool, "acme", ["reviews:decide"])
    async with api_client(core, reviewer) as http:
        assert (await http.get(link)).status_code == 403


async def test_a_lost_collection_is_retried_and_then_verifies(
    database_url: str, mqtt_url: str, tmp_path: Path
) -> None:
    """A collect_evidence that gets no answer is retried on schedule; the retry verifies."""
    async with (
        core_running(
            database_url, mqtt_url, tmp_path, verify_collect_timeout=0.5, verify_retry_base=0.2
        ) as core,
        api_client(core, await keys.create_key(core.pool, "acme", keys.SCOPES)) as client,
    ):
        ref = first_ref(core)
        drop = {"lockerRef": ref, "fault": "drop", "after": 1, "count": 1}  # after the link
        assert (await client.post("/sim/faults", json=drop)).status_code == 201
        asset = await settled(client, await register(client, ref))
        assert asset["status"] == "verified"
        assert core.fleet.devices[0].received["collect_evidence"] == 2  # type: ignore[union-attr]
        alerts = (await client.get("/api/ops/alerts", params={"code": "E_VERIFY_FAILED"})).json()
        assert alerts["items"] == []


async def test_collection_failing_every_retry_escalates_with_an_alert(
    database_url: str, mqtt_url: str, tmp_path: Path
) -> None:
    """Locker gone offline: each attempt fails, the last one ends the verification failed with
    an ops alert and a verification.completed event; the asset stays linked."""
    async with (
        core_running(
            database_url,
            mqtt_url,
            tmp_path,
            verify_collect_timeout=0.5,
            verify_retry_base=0.2,
            verify_max_attempts=3,
        ) as core,
        api_client(core, await keys.create_key(core.pool, "acme", keys.SCOPES)) as client,
    ):
        ref = first_ref(core)
        hook = await events_to(client, "verification.completed")
        gone = {"lockerRef": ref, "fault": "offline", "seconds": 120, "after": 1}
        assert (await client.post("/sim/faults", json=gone)).status_code == 201
        asset_id = await register(client, ref)
        asset = await settled(client, asset_id)
        assert asset["status"] == "linked"
        assert asset["verification"]["status"] == "failed"

        async def alert() -> list[dict[str, Any]]:
            params = {"code": "E_VERIFY_FAILED", "open": "true"}
            items: list[dict[str, Any]] = (
                await client.get("/api/ops/alerts", params=params)
            ).json()["items"]
            return items

        [raised] = await eventually(alert)
        assert raised["severity"] == "critical"
        assert raised["subject"]["assetId"] == asset_id
        assert raised["subject"]["attempts"] == 3
        assert raised["subject"]["error"] == "E_LOCKER_UNREACHABLE"  # the last: known offline
        [event] = await delivered(client, hook, 1)
        assert event["data"]["outcome"] == "failed"
        assert event["data"]["assetId"] == asset_id
