"""The happy path of asset registration through the HTTP API, on real parts."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from proveniq_core import db
from proveniq_core.ledger import audit
from proveniq_core.service import Core
from tests.integration.conftest import first_ref


async def wait_status(client: httpx.AsyncClient, asset_id: str, status: str) -> dict[str, Any]:
    for _ in range(100):
        body: dict[str, Any] = (await client.get(f"/api/assets/{asset_id}")).json()
        if body["status"] == status:
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"asset {asset_id} stuck in {body['status']}, wanted {status}")


async def test_register_asset_returns_201_and_reaches_verified(
    core: Core, client: httpx.AsyncClient
) -> None:
    """POST /api/assets links the locker, answers 201 with three ids, then verifies the asset."""
    ref = first_ref(core)
    resp = await client.post(
        "/api/assets", json={"name": "Rolex 16610", "category": "watch", "lockerRef": ref}
    )
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["status"] == "linked"
    assert body["lockerId"].startswith("LKR-")
    assert core.fleet is not None
    assert core.fleet.device(ref).links == {body["assetId"]: body["lockerId"]}

    asset = await wait_status(client, body["assetId"], "verified")
    assert asset["verification"]["verificationId"] == body["verificationId"]
    assert asset["verification"]["status"] == "verified"
    assert asset["lockerId"] == body["lockerId"]
    async with db.connection(core.pool) as conn:
        photos = await db.fetch_all(
            conn, "audit_for_entity", {"entity_type": "asset", "entity_id": body["assetId"]}
        )
        ev = await conn.execute(
            "SELECT sha256 FROM evidence WHERE asset_id = %s", (body["assetId"],)
        )
        hashes = [r["sha256"] for r in await ev.fetchall()]
    assert [r["action"] for r in photos] == ["asset.created", "asset.linked", "asset.verified"]
    created, linked, verified = photos
    pending = {"status": "pending", "version": 1, "lockerRef": ref, "lockerId": None}
    assert (created["before"], created["after"]) == (
        None,
        pending | {"name": "Rolex 16610", "category": "watch"},
    )
    now_linked = {"status": "linked", "version": 2, "lockerRef": ref, "lockerId": body["lockerId"]}
    assert (linked["before"], linked["after"]) == (pending, now_linked)
    assert verified["before"] == now_linked
    assert verified["after"] == now_linked | {"status": "verified", "version": 3}
    assert [r["actor"] for r in photos] == [created["actor"]] * 2 + ["system:verify"]
    assert created["saga_id"] == linked["saga_id"] is not None
    assert len(hashes) == 1
    assert core.evidence.path(hashes[0]).exists()


async def test_saga_timeline_records_every_step(core: Core, client: httpx.AsyncClient) -> None:
    """GET /api/ops/sagas/{id} shows the four steps completed in order with durations."""
    resp = await client.post(
        "/api/assets", json={"name": "Lamp", "category": "equipment", "lockerRef": first_ref(core)}
    )
    saga_id = (await client.get(f"/api/assets/{resp.json()['assetId']}")).json()["sagaId"]
    saga = (await client.get(f"/api/ops/sagas/{saga_id}")).json()
    assert saga["status"] == "completed"
    assert [(s["step"], s["status"]) for s in saga["steps"]] == [
        ("create_ledger_record", "completed"),
        ("link_locker", "completed"),
        ("update_status", "completed"),
        ("queue_verification", "completed"),
    ]
    assert all(s["durationMs"] is not None and s["durationMs"] >= 0 for s in saga["steps"])


async def test_unregistered_locker_is_422_and_writes_nothing(
    core: Core, client: httpx.AsyncClient
) -> None:
    """A lockerRef the tenant has not registered is refused before any write or command."""
    resp = await client.post(
        "/api/assets", json={"name": "X", "category": "watch", "lockerRef": "no-such-locker"}
    )
    assert resp.status_code == 422
    assert resp.json()["error"]["code"] == "E_LEDGER_CONSTRAINT"
    async with db.connection(core.pool) as conn:
        n = await (await conn.execute("SELECT count(*) AS n FROM assets")).fetchone()
        s = await (await conn.execute("SELECT count(*) AS n FROM sagas")).fetchone()
    assert n is not None and n["n"] == 0
    assert s is not None and s["n"] == 0


async def test_invalid_bodies_get_the_envelope(client: httpx.AsyncClient) -> None:
    """Wrong types, unknown fields, bad JSON: 422 E_VALIDATION naming each field."""
    cases = [
        {"name": "", "category": "watch", "lockerRef": "locker-001"},
        {"name": "a", "category": "Not Valid", "lockerRef": "locker-001"},
        {"name": "a", "category": "watch", "lockerRef": "bad/ref"},
        {"name": "a", "category": "watch", "lockerRef": "locker-001", "extra": 1},
        {"name": 5, "category": "watch"},
    ]
    for case in cases:
        resp = await client.post("/api/assets", json=case)
        assert resp.status_code == 422, case
        err = resp.json()["error"]
        assert err["code"] == "E_VALIDATION"
        assert err["requestId"] == resp.headers["X-Request-ID"]
        assert err["details"], case
    raw = await client.post(
        "/api/assets", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert raw.status_code == 422
    assert raw.json()["error"]["code"] == "E_VALIDATION"


async def test_list_assets_paginates_with_a_cursor(core: Core, client: httpx.AsyncClient) -> None:
    """GET /api/assets returns newest first, in pages, filterable by status."""
    ids = []
    for i in range(5):
        r = await client.post(
            "/api/assets", json={"name": f"a{i}", "category": "watch", "lockerRef": first_ref(core)}
        )
        ids.append(r.json()["assetId"])
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/api/assets", params=params)).json()
        assert len(page["items"]) <= 2
        seen += [a["assetId"] for a in page["items"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    none = (await client.get("/api/assets", params={"status": "compensated"})).json()
    assert none["items"] == []
    bad = await client.get("/api/assets", params={"cursor": "!!!"})
    assert bad.status_code == 422
    assert bad.json()["error"]["code"] == "E_VALIDATION"


async def test_get_asset_sends_version_as_etag(core: Core, client: httpx.AsyncClient) -> None:
    """The asset's version is its ETag, and it grows with each transition."""
    r = await client.post(
        "/api/assets", json={"name": "a", "category": "watch", "lockerRef": first_ref(core)}
    )
    got = await client.get(f"/api/assets/{r.json()['assetId']}")
    assert got.headers["ETag"] == f'"{got.json()["version"]}"'
    assert got.json()["version"] >= 2  # created, then linked
    missing = await client.get("/api/assets/not-a-uuid")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "E_NOT_FOUND"


async def test_audit_chain_verifies_after_registrations(
    core: Core, client: httpx.AsyncClient
) -> None:
    """Registrations leave a sealed chain that verifies end to end."""
    for i in range(3):
        created = await client.post(
            "/api/assets", json={"name": f"a{i}", "category": "watch", "lockerRef": first_ref(core)}
        )
        await wait_status(client, created.json()["assetId"], "verified")  # no more writes after
    await audit.seal(core.pool)
    report = await audit.verify(core.pool)
    assert report.ok
    assert report.checked >= 3 * 4  # created, linked, verified, verification.completed
    assert report.unsealed == 0
