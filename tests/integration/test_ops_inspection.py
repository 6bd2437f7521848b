"""Ops inspection over HTTP: the saga list and the alert list, on a running Core."""

from __future__ import annotations

from typing import Any

import httpx

from proveniq_core import db
from proveniq_core.api.app import create_app
from proveniq_core.errors import LockerHardwareError
from proveniq_core.ledger import keys
from proveniq_core.ledger.alerts import raise_alert
from proveniq_core.saga import SagaDefinition, SagaEngine, Step, StepContext
from proveniq_core.service import Core
from tests.integration.conftest import TENANT, first_ref

STATUSES = ("running", "completed", "compensating", "compensated", "compensation_failed", "failed")


def _client(core: Core, key: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(core)), base_url="http://t", headers=headers
    )


def jammed_saga() -> SagaDefinition:
    """Two steps: ``reserve`` succeeds, ``jam`` fails for good, so ``reserve`` is undone."""

    async def reserve(ctx: StepContext) -> dict[str, Any]:
        return {"reserved": True}

    async def release(ctx: StepContext) -> None:
        return None

    async def jam(ctx: StepContext) -> dict[str, Any]:
        raise LockerHardwareError("door jammed")

    return SagaDefinition(
        "ops_probe",
        (Step("reserve", reserve, release, timeout=1.0), Step("jam", jam, timeout=1.0)),
    )


async def register(client: httpx.AsyncClient, core: Core, name: str) -> str:
    """Register an asset; return the id of its registration saga."""
    created = await client.post(
        "/api/assets", json={"name": name, "category": "watch", "lockerRef": first_ref(core)}
    )
    assert created.status_code == 201, created.text
    asset = (await client.get(f"/api/assets/{created.json()['assetId']}")).json()
    return str(asset["sagaId"])


async def test_sagas_listed_newest_first_in_pages(core: Core, client: httpx.AsyncClient) -> None:
    """GET /api/ops/sagas pages through registrations newest first with their outcome."""
    ids = [await register(client, core, f"a{i}") for i in range(3)]
    first = (await client.get("/api/ops/sagas", params={"limit": 2})).json()
    assert len(first["items"]) == 2
    assert first["nextCursor"]
    second = (
        await client.get("/api/ops/sagas", params={"limit": 2, "cursor": first["nextCursor"]})
    ).json()
    assert second["nextCursor"] is None
    items = first["items"] + second["items"]
    assert [s["sagaId"] for s in items] == list(reversed(ids))
    for s in items:
        assert s["name"] == "asset_registration"
        assert s["status"] == "completed"
        assert s["lastStep"] == "queue_verification"
        assert s["lastStepStatus"] == "completed"
        assert s["errorCode"] is None
        assert s["owner"] is None  # released when it finished
        assert s["finishedAt"] is not None and s["durationMs"] >= 0


async def test_sagas_filter_by_status_and_name(core: Core, client: httpx.AsyncClient) -> None:
    """status= and name= narrow the list; a compensated saga shows its error and last step."""
    registered = await register(client, core, "watch")
    probe = await SagaEngine(core.pool).run(jammed_saga(), {}, tenant_id=TENANT)
    assert probe.status == "compensated"

    async def listed(**params: str) -> list[dict[str, Any]]:
        resp = await client.get("/api/ops/sagas", params=params)
        assert resp.status_code == 200, resp.text
        return list(resp.json()["items"])

    [compensated] = await listed(status="compensated")
    assert compensated["sagaId"] == probe.saga_id
    assert compensated["errorCode"] == "E_LOCKER_HARDWARE"
    assert (compensated["lastStep"], compensated["lastStepPhase"]) == ("reserve", "compensate")
    assert [s["sagaId"] for s in await listed(status="completed")] == [registered]
    assert [s["sagaId"] for s in await listed(name="ops_probe")] == [probe.saga_id]
    assert await listed(status="failed") == []
    assert await listed(status="completed", name="ops_probe") == []


async def test_sagas_listed_only_to_their_tenant(core: Core, client: httpx.AsyncClient) -> None:
    """Another tenant's key lists no acme saga, only the system's (no tenant) ones."""
    acme = await register(client, core, "watch")
    system = await SagaEngine(core.pool).schedule(jammed_saga(), {}, delay=3600)
    other = await keys.create_key(core.pool, "globex", ["ops:read"])
    async with _client(core, other) as http:
        theirs = (await http.get("/api/ops/sagas")).json()["items"]
        hidden = await http.get("/api/ops/sagas", params={"name": "asset_registration"})
    assert [(s["sagaId"], s["status"], s["lastStep"]) for s in theirs] == [
        (system, "running", None)
    ]
    assert hidden.json()["items"] == []
    mine = (await client.get("/api/ops/sagas")).json()["items"]
    assert [s["sagaId"] for s in mine] == [system, acme]


async def test_ops_lists_need_a_key_with_ops_read(core: Core) -> None:
    """No key is 401; a key without ops:read is 403 naming the scope; on both lists."""
    reader = await keys.create_key(core.pool, TENANT, ["assets:read"])
    for path in ("/api/ops/sagas", "/api/ops/alerts"):
        async with _client(core, None) as http:
            anonymous = await http.get(path)
        assert anonymous.status_code == 401, path
        assert anonymous.json()["error"]["code"] == "E_UNAUTHORIZED"
        async with _client(core, reader) as http:
            forbidden = await http.get(path)
        assert forbidden.status_code == 403, path
        assert forbidden.json()["error"]["code"] == "E_FORBIDDEN"
        assert "ops:read" in forbidden.json()["error"]["message"]


async def test_bad_query_parameters_are_422(client: httpx.AsyncClient) -> None:
    """An unknown status is refused naming the valid ones; a bad cursor or limit is refused."""
    bad = await client.get("/api/ops/sagas", params={"status": "stuck"})
    assert bad.status_code == 422
    error = bad.json()["error"]
    assert error["code"] == "E_VALIDATION"
    assert all(status in error["message"] for status in STATUSES), error["message"]
    for path, params in [
        ("/api/ops/sagas", {"cursor": "!!!"}),
        ("/api/ops/sagas", {"cursor": "bm90LWEtZGF0ZXxub3QtYS11dWlk"}),  # "not-a-date|not-a-uuid"
        ("/api/ops/sagas", {"limit": "0"}),
        ("/api/ops/alerts", {"cursor": "!!!"}),
        ("/api/ops/alerts", {"open": "maybe"}),
        ("/api/ops/alerts", {"limit": "201"}),
    ]:
        resp = await client.get(path, params=params)
        assert resp.status_code == 422, (path, params, resp.text)
        assert resp.json()["error"]["code"] == "E_VALIDATION"


async def alert(core: Core, key: str, code: str, tenant_id: str | None = TENANT) -> db.Row:
    async with db.transaction(core.pool) as conn:
        return await raise_alert(
            conn,
            code=code,
            severity="critical",
            message=f"{key} needs an operator",
            dedup_key=key,
            tenant_id=tenant_id,
            subject={"sagaId": key},
        )


async def test_alerts_listed_newest_first_with_repeat_counts(
    core: Core, client: httpx.AsyncClient
) -> None:
    """A repeated alert is one row counted twice; alerts page newest first, camelCase."""
    first = await alert(core, "saga:1", "E_PARTIAL_COMMIT")
    await alert(core, "broker", "E_LOCKER_UNREACHABLE", tenant_id=None)
    await alert(core, "saga:1", "E_PARTIAL_COMMIT")
    page1 = (await client.get("/api/ops/alerts", params={"limit": 1})).json()
    page2 = (
        await client.get("/api/ops/alerts", params={"limit": 1, "cursor": page1["nextCursor"]})
    ).json()
    assert page2["nextCursor"] is None
    [repeated], [broker] = page1["items"], page2["items"]
    assert repeated == {
        "alertId": str(first["id"]),
        "code": "E_PARTIAL_COMMIT",
        "severity": "critical",
        "message": "saga:1 needs an operator",
        "subject": {"sagaId": "saga:1"},
        "count": 2,
        "firstAt": repeated["firstAt"],
        "lastAt": repeated["lastAt"],
        "resolvedAt": None,
        "acknowledgedAt": None,
        "acknowledgedBy": None,
        "resolvedBy": None,
    }
    assert repeated["lastAt"] > repeated["firstAt"]
    assert (broker["code"], broker["count"]) == ("E_LOCKER_UNREACHABLE", 1)


async def test_alerts_filter_by_open_and_code_per_tenant(
    core: Core, client: httpx.AsyncClient
) -> None:
    """open= and code= narrow the list; another tenant's alerts never appear."""
    done = await alert(core, "saga:old", "E_PARTIAL_COMMIT")
    async with db.connection(core.pool) as conn:
        await conn.execute("UPDATE ops_alerts SET resolved_at = now() WHERE id = %s", (done["id"],))
    live = await alert(core, "saga:new", "E_LOCKER_HARDWARE")
    await alert(core, "saga:theirs", "E_PARTIAL_COMMIT", tenant_id="globex")

    async def listed(**params: str) -> list[str]:
        resp = await client.get("/api/ops/alerts", params=params)
        assert resp.status_code == 200, resp.text
        return [a["alertId"] for a in resp.json()["items"]]

    assert await listed() == [str(live["id"]), str(done["id"])]
    assert await listed(open="true") == [str(live["id"])]
    assert await listed(open="false") == [str(done["id"])]
    assert await listed(code="E_PARTIAL_COMMIT") == [str(done["id"])]
    assert await listed(code="E_NOPE") == []
