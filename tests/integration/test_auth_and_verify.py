"""Auth, tenant isolation and the verification outcomes, through the HTTP API."""

from __future__ import annotations

import httpx

from proveniq_core import db
from proveniq_core.api.app import create_app
from proveniq_core.ledger import keys
from proveniq_core.locker.simulator import LatencyProfile, LockerFleet, SimulatedLocker
from proveniq_core.service import Core
from tests.conftest import unique_prefix
from tests.integration.conftest import first_ref
from tests.integration.test_registration import wait_status


def _client(core: Core, key: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(core)), base_url="http://t", headers=headers
    )


async def test_missing_or_bad_keys_get_401(core: Core) -> None:
    """No key, a malformed key, a wrong secret and a revoked key are all 401 in the envelope."""
    good = await keys.create_key(core.pool, "acme", ["assets:read"])
    key_id = good.split("_")[1]
    async with db.connection(core.pool) as conn:
        await db.execute(conn, "revoke_api_key", {"id": key_id})
    for key in (None, "nonsense", f"pk_{key_id}_wrongsecret", good):
        async with _client(core, key) as http:
            resp = await http.get("/api/assets")
        assert resp.status_code == 401, key
        assert resp.json()["error"]["code"] == "E_UNAUTHORIZED"


async def test_missing_scope_is_403(core: Core) -> None:
    """A read-only key may list assets but not register one."""
    key = await keys.create_key(core.pool, "acme", ["assets:read"])
    async with _client(core, key) as http:
        assert (await http.get("/api/assets")).status_code == 200
        resp = await http.post(
            "/api/assets", json={"name": "a", "category": "watch", "lockerRef": first_ref(core)}
        )
    assert resp.status_code == 403
    assert resp.json()["error"]["code"] == "E_FORBIDDEN"
    assert "assets:write" in resp.json()["error"]["message"]


async def test_tenants_never_see_each_other(core: Core, client: httpx.AsyncClient) -> None:
    """Another tenant's key cannot read, list, use the lockers of, or inspect the sagas of acme."""
    created = await client.post(
        "/api/assets", json={"name": "a", "category": "watch", "lockerRef": first_ref(core)}
    )
    asset = (await client.get(f"/api/assets/{created.json()['assetId']}")).json()
    other = await keys.create_key(core.pool, "globex", keys.SCOPES)
    async with _client(core, other) as http:
        got = await http.get(f"/api/assets/{asset['assetId']}")
        assert got.status_code == 404
        assert got.json()["error"]["code"] == "E_NOT_FOUND"
        assert (await http.get("/api/assets")).json()["items"] == []
        assert (await http.get("/api/lockers")).json()["items"] == []
        saga = await http.get(f"/api/ops/sagas/{asset['sagaId']}")
        assert saga.status_code == 404
        use = await http.post(
            "/api/assets", json={"name": "a", "category": "watch", "lockerRef": first_ref(core)}
        )
        assert use.status_code == 422
        assert use.json()["error"]["code"] == "E_LEDGER_CONSTRAINT"
        taken = await http.post(
            "/api/lockers", json={"lockerRef": first_ref(core), "site": {"lat": 0, "lon": 0}}
        )
        assert taken.status_code == 409
        assert taken.json()["error"]["code"] == "E_CONFLICT"


async def test_lockers_register_and_list_with_presence(
    core: Core, client: httpx.AsyncClient
) -> None:
    """POST /api/lockers registers a locker; the list shows fleet lockers online."""
    resp = await client.post(
        "/api/lockers",
        json={"lockerRef": "vault-7", "site": {"lat": 10, "lon": 20}, "geofenceM": 30},
    )
    assert resp.status_code == 201
    assert resp.json()["site"] == {"lat": 10, "lon": 20}
    assert resp.json()["online"] is None  # no device has ever spoken for vault-7
    bad = await client.post("/api/lockers", json={"lockerRef": "v", "site": {"lat": 91, "lon": 0}})
    assert bad.status_code == 422
    listed = (await client.get("/api/lockers", params={"limit": 2})).json()
    assert len(listed["items"]) == 2 and listed["nextCursor"]
    rest = (await client.get("/api/lockers", params={"cursor": listed["nextCursor"]})).json()
    refs = [i["lockerRef"] for i in listed["items"] + rest["items"]]
    assert sorted(refs) == refs and "vault-7" in refs and len(refs) == 4
    fleet_ref = first_ref(core)
    assert await core.gateway.wait_online(fleet_ref, 5)
    listed = (await client.get("/api/lockers", params={"limit": 2})).json()
    assert next(i for i in listed["items"] + rest["items"] if i["lockerRef"] == fleet_ref)["online"]


async def test_evidence_outside_the_geofence_is_rejected_with_a_reason(
    core: Core, client: httpx.AsyncClient, mqtt_url: str
) -> None:
    """A locker whose photos come from 5 km away from its registered site ends rejected."""
    ref = unique_prefix() + "far"
    fleet = LockerFleet(mqtt_url, [SimulatedLocker(ref, 48.90, 2.35)], LatencyProfile.instant())
    await fleet.start()
    try:
        await client.post(
            "/api/lockers",
            json={"lockerRef": ref, "site": {"lat": 48.855, "lon": 2.35}, "geofenceM": 100},
        )
        created = await client.post(
            "/api/assets", json={"name": "a", "category": "watch", "lockerRef": ref}
        )
        assert created.status_code == 201
        asset = await wait_status(client, created.json()["assetId"], "rejected")
    finally:
        await fleet.stop()
    assert asset["verification"]["status"] == "rejected"
    assert any("geofence" in r for r in asset["verification"]["reasons"])


async def test_health_endpoints_need_no_key(core: Core) -> None:
    """/healthz and /readyz answer without a key; readyz reports each dependency."""
    async with _client(core, None) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = await http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "checks": {"database": "ok", "migrations": "ok", "broker": "ok", "ledgerCircuit": "closed"},
        "openCircuits": [],
    }
