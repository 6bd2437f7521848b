"""The operator actions the console offers, over the HTTP API first: retry all exhausted
entries, discard with a reason, acknowledge and resolve an alert, lockers' presence and
maintenance; each recorded under the key's name."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from proveniq_core import db
from proveniq_core.ledger import keys
from proveniq_core.service import Core
from tests.integration.conftest import TENANT, api_client, first_ref
from tests.integration.test_ops_api import LINKED, entry_of, in_maintenance, inject, register


async def exhausted_entry(core: Core, client: httpx.AsyncClient, ref: str) -> dict[str, Any]:
    """An asset held link_failed with an exhausted entry: a hardware fault refused its link
    and an operator's retry-link while the fault lasted."""
    refused = await register(client, ref)
    assert refused.status_code == 502, refused.text
    asset_id = refused.json()["error"]["assetId"]
    again = await client.post(f"/api/ops/assets/{asset_id}/retry-link")
    assert again.json()["retryEntry"]["status"] == "exhausted", again.text
    return await entry_of(client, asset_id)


async def audit_rows(core: Core, entity_type: str, entity_id: str) -> list[db.Row]:
    async with db.connection(core.pool) as conn:
        return await db.fetch_all(
            conn, "audit_for_entity", {"entity_type": entity_type, "entity_id": entity_id}
        )


async def test_retry_all_exhausted_retries_each_and_counts(
    core: Core, client: httpx.AsyncClient
) -> None:
    """Two exhausted entries: retry-exhausted while the fault lasts counts 2 retried and 0
    resolved; after clearing it, 2 retried and 2 resolved, both assets linked; then 0."""
    ref = first_ref(core)
    await inject(client, lockerRef=ref, fault="hardware_fault")
    entries = [await exhausted_entry(core, client, ref) for _ in range(2)]

    still = await client.post("/api/ops/retry-queue/retry-exhausted")
    assert still.status_code == 200, still.text
    assert (still.json()["count"], still.json()["resolved"]) == (2, 0)

    assert (await client.delete("/sim/faults")).status_code == 200
    done = (await client.post("/api/ops/retry-queue/retry-exhausted")).json()
    assert (done["count"], done["resolved"], done["refused"]) == (2, 2, [])
    assert {i["id"] for i in done["items"]} == {e["id"] for e in entries}
    for entry in entries:
        asset = (await client.get(f"/api/assets/{entry['assetId']}")).json()
        assert asset["status"] in LINKED
    trail = await audit_rows(core, "retry_entry", entries[0]["id"])
    assert [(r["action"], r["actor"]) for r in trail][-1] == ("retry_entry.retried", "test admin")
    assert (await client.post("/api/ops/retry-queue/retry-exhausted")).json()["count"] == 0


async def test_retry_all_exhausted_needs_ops_write(core: Core) -> None:
    """A key with ops:read only is refused 403 in the envelope."""
    key = await keys.create_key(core.pool, TENANT, ["ops:read"], name="watcher")
    async with api_client(core, key) as http:
        refused = await http.post("/api/ops/retry-queue/retry-exhausted")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "E_FORBIDDEN"


async def test_discard_records_the_reason_and_the_name(
    core: Core, client: httpx.AsyncClient
) -> None:
    """A discard with a reason is audited with it under the key's name; a blank or overlong
    reason is 422 and discards nothing."""
    [asset_id] = await in_maintenance(core, client)
    entry = await entry_of(client, asset_id)
    path = f"/api/ops/retry-queue/{entry['id']}/discard"
    for bad in ({"reason": ""}, {"reason": "x" * 501}, {"why": "no"}):
        assert (await client.post(path, json=bad)).status_code == 422, bad
    discarded = await client.post(path, json={"reason": "duplicate registration"})
    assert discarded.status_code == 200, discarded.text
    assert discarded.json()["status"] == "discarded"
    [row] = [r for r in await audit_rows(core, "retry_entry", entry["id"])]
    assert (row["action"], row["actor"]) == ("retry_entry.discarded", "test admin")
    assert row["after"]["reason"] == "duplicate registration"


async def test_an_operator_acknowledges_then_resolves_an_alert(
    core: Core, client: httpx.AsyncClient
) -> None:
    """A hardware fault's alert: acknowledge marks it (twice keeps the first), resolve closes
    it with the name; acting on it again is 409; an unknown id 404; ops:read alone 403."""
    ref = first_ref(core)
    await inject(client, lockerRef=ref, fault="hardware_fault")
    assert (await register(client, ref)).status_code == 502
    params = {"open": "true", "code": "E_LOCKER_HARDWARE"}
    [alert] = (await client.get("/api/ops/alerts", params=params)).json()["items"]
    assert alert["acknowledgedAt"] is None and alert["resolvedBy"] is None
    base = f"/api/ops/alerts/{alert['alertId']}"

    reader = await keys.create_key(core.pool, TENANT, ["ops:read"], name="watcher")
    async with api_client(core, reader) as http:
        assert (await http.post(f"{base}/acknowledge")).status_code == 403

    acked = await client.post(f"{base}/acknowledge")
    assert acked.status_code == 200, acked.text
    assert acked.json()["acknowledgedBy"] == "test admin"
    again = await client.post(f"{base}/acknowledge")
    assert again.json()["acknowledgedAt"] == acked.json()["acknowledgedAt"]
    assert again.json()["resolvedAt"] is None

    resolved = await client.post(f"{base}/resolve")
    assert resolved.status_code == 200
    assert resolved.json()["resolvedBy"] == "test admin"
    assert (await client.get("/api/ops/alerts", params=params)).json()["items"] == []
    for action in ("acknowledge", "resolve"):
        late = await client.post(f"{base}/{action}")
        assert late.status_code == 409
        assert "already resolved" in late.json()["error"]["message"]
    for missing in (uuid.uuid4(), "not-an-id"):
        assert (await client.post(f"/api/ops/alerts/{missing}/resolve")).status_code == 404
    trail = await audit_rows(core, "ops_alert", alert["alertId"])
    assert [(r["action"], r["actor"]) for r in trail] == [
        ("alert.acknowledged", "test admin"),
        ("alert.acknowledged", "test admin"),
        ("alert.resolved", "test admin"),
    ]


async def test_lockers_show_presence_since_and_maintenance(
    core: Core, client: httpx.AsyncClient
) -> None:
    """The lockers list shows each one online since a time, and a maintenance end once set."""
    ref = first_ref(core)
    until = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    started = await client.post(
        f"/api/ops/lockers/{ref}/maintenance", json={"until": until.isoformat()}
    )
    assert started.status_code == 200
    items = {i["lockerRef"]: i for i in (await client.get("/api/lockers")).json()["items"]}
    mine = items[ref]
    assert mine["online"] is True
    assert datetime.fromisoformat(mine["presenceSince"]) <= datetime.now(UTC)
    assert datetime.fromisoformat(mine["maintenanceUntil"]) == until
