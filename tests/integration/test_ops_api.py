"""The ops API of the failure path over HTTP, driven by real faults in the simulated lockers:
the retry queue, retry-link and cancel of held assets, and locker maintenance."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from proveniq_core.ledger import keys
from proveniq_core.service import Core
from tests.helpers import eventually
from tests.integration.conftest import TENANT, api_client, core_running, first_ref


async def register(client: httpx.AsyncClient, ref: str, name: str = "Watch") -> httpx.Response:
    return await client.post(
        "/api/assets", json={"name": name, "category": "watch", "lockerRef": ref}
    )


async def inject(client: httpx.AsyncClient, **rule: Any) -> None:
    assert (await client.post("/sim/faults", json=rule)).status_code == 201


async def asset_status(client: httpx.AsyncClient, asset_id: str) -> str:
    return str((await client.get(f"/api/assets/{asset_id}")).json()["status"])


LINKED = ("linked", "verified")  # the verify worker may have verified a linked asset already


def sent(core: Core, ref: str, command: str) -> int:
    """How many commands of this type the simulated locker has received."""
    assert core.fleet is not None
    return int(core.fleet.snapshot()[ref]["received"].get(command, 0))


def links(core: Core, ref: str) -> dict[str, str]:
    assert core.fleet is not None
    return dict(core.fleet.snapshot()[ref]["links"])


async def link_failed(core: Core, client: httpx.AsyncClient) -> str:
    """An asset held as link_failed by a hardware fault that stays until cleared."""
    await inject(client, lockerRef=first_ref(core), fault="hardware_fault")
    refused = await register(client, first_ref(core))
    assert refused.status_code == 502, refused.text
    return str(refused.json()["error"]["assetId"])


async def in_maintenance(core: Core, client: httpx.AsyncClient, n: int = 1) -> list[str]:
    """Put the first locker in maintenance for an hour; register ``n`` assets to it (202)."""
    until = datetime.now(UTC) + timedelta(hours=1)
    started = await client.post(
        f"/api/ops/lockers/{first_ref(core)}/maintenance", json={"until": until.isoformat()}
    )
    assert started.status_code == 200, started.text
    deferred = [await register(client, first_ref(core), f"w{i}") for i in range(n)]
    assert [r.status_code for r in deferred] == [202] * n
    return [str(r.json()["assetId"]) for r in deferred]


async def entry_of(client: httpx.AsyncClient, asset_id: str) -> dict[str, Any]:
    page = (await client.get("/api/ops/retry-queue", params={"assetId": asset_id})).json()
    [entry] = page["items"]
    return dict(entry)


@pytest_asyncio.fixture
async def other_tenant(core: Core) -> AsyncIterator[httpx.AsyncClient]:
    """A client of another tenant with every scope."""
    key = await keys.create_key(core.pool, "globex", keys.SCOPES, name="other tenant")
    async with api_client(core, key) as http:
        yield http


@pytest_asyncio.fixture
async def reader(core: Core) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the same tenant with ops:read only."""
    key = await keys.create_key(core.pool, TENANT, ["ops:read", "assets:read"], name="reader")
    async with api_client(core, key) as http:
        yield http


async def test_retry_link_after_a_hardware_fault_links_with_a_new_command(
    core: Core, client: httpx.AsyncClient
) -> None:
    """link_failed → retry-link while the fault lasts: link_failed again with an exhausted
    entry; after clearing the fault: linked, the entry resolved and the alert closed."""
    ref = first_ref(core)
    link_commands: list[str] = []

    def on_event(event: str, info: dict[str, Any]) -> None:
        if event == "command_sent" and info["type"] == "link":
            link_commands.append(info["commandId"])

    core.gateway.add_event_hook(on_event)
    asset_id = await link_failed(core, client)
    assert await asset_status(client, asset_id) == "link_failed"
    alerts = (await client.get("/api/ops/alerts", params={"open": "true"})).json()["items"]
    assert [a["subject"]["assetId"] for a in alerts if a["code"] == "E_LOCKER_HARDWARE"] == [
        asset_id
    ]

    again = await client.post(f"/api/ops/assets/{asset_id}/retry-link")
    assert again.status_code == 200, again.text
    body = again.json()
    assert (body["status"], body["retryAt"], body["lastError"]["code"]) == (
        "link_failed",
        None,
        "E_LOCKER_HARDWARE",
    )
    assert body["retryEntry"]["status"] == "exhausted"
    assert sent(core, ref, "link") == 2  # the operator's retry reached the locker

    assert (await client.delete("/sim/faults")).status_code == 200
    linked = await client.post(f"/api/ops/assets/{asset_id}/retry-link")
    assert linked.status_code == 200, linked.text
    body = linked.json()
    assert core.fleet is not None
    assert body["status"] in LINKED
    assert (body["lockerId"], body["sagaStatus"]) == (core.fleet.device(ref).locker_id, "completed")
    assert (body["retryAt"], body["lastError"]) == (None, None)
    assert body["retryEntry"]["status"] == "resolved"
    assert links(core, ref) == {asset_id: core.fleet.device(ref).locker_id}
    assert len(set(link_commands)) == 3  # each retry-link sent a command of its own
    assert await asset_status(client, asset_id) in LINKED
    alerts = (await client.get("/api/ops/alerts", params={"open": "true"})).json()["items"]
    assert [a for a in alerts if a["subject"].get("assetId") == asset_id] == []


async def test_retry_link_refuses_what_it_does_not_apply_to(
    core: Core,
    client: httpx.AsyncClient,
    reader: httpx.AsyncClient,
    other_tenant: httpx.AsyncClient,
) -> None:
    """retry-link: 409 for a linked or pending_link asset, 404 for an unknown id or another
    tenant's asset, 403 without ops:write; the asset is left as it was."""
    held = await link_failed(core, client)
    assert (await client.delete("/sim/faults")).status_code == 200
    linked = (await register(client, first_ref(core))).json()["assetId"]

    conflict = await client.post(f"/api/ops/assets/{linked}/retry-link")
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "E_CONFLICT"
    assert "applies only to link_failed" in conflict.json()["error"]["message"]
    for unknown in (str(uuid.uuid4()), "not-an-id"):
        missing = await client.post(f"/api/ops/assets/{unknown}/retry-link")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "E_NOT_FOUND"
    assert (await other_tenant.post(f"/api/ops/assets/{held}/retry-link")).status_code == 404
    denied = await reader.post(f"/api/ops/assets/{held}/retry-link")
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "E_FORBIDDEN"
    assert await asset_status(client, held) == "link_failed"
    assert sent(core, first_ref(core), "link") == 2  # the fault, then the linked one

    [waiting] = await in_maintenance(core, client)
    pending = await client.post(f"/api/ops/assets/{waiting}/retry-link")
    assert pending.status_code == 409
    assert "retry queue" in pending.json()["error"]["message"]


async def test_cancel_link_failed_compensates_without_touching_the_locker(
    core: Core, client: httpx.AsyncClient, other_tenant: httpx.AsyncClient
) -> None:
    """cancel of a link_failed asset: compensated, no link and no unlink on the locker (it
    refused the link); a second cancel is 409; another tenant gets 404."""
    ref = first_ref(core)
    asset_id = await link_failed(core, client)
    assert (await other_tenant.post(f"/api/ops/assets/{asset_id}/cancel")).status_code == 404

    cancelled = await client.post(f"/api/ops/assets/{asset_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    body = cancelled.json()
    assert (body["status"], body["sagaStatus"], body["retryAt"]) == (
        "compensated",
        "compensated",
        None,
    )
    assert await asset_status(client, asset_id) == "compensated"
    assert links(core, ref) == {}
    assert sent(core, ref, "unlink") == 0

    again = await client.post(f"/api/ops/assets/{asset_id}/cancel")
    assert again.status_code == 409
    assert "is compensated" in again.json()["error"]["message"]
    assert (await client.post(f"/api/ops/assets/{uuid.uuid4()}/cancel")).status_code == 404


@pytest_asyncio.fixture
async def slow_core(database_url: str, mqtt_url: str, tmp_path: Path) -> AsyncIterator[Core]:
    """A Core that waits 100 ms for a link in the request and 300 ms for any command."""
    async with core_running(
        database_url, mqtt_url, tmp_path, link_sync_budget_ms=100, locker_command_timeout=0.3
    ) as c:
        yield c


async def test_cancel_pending_link_undoes_a_link_in_doubt(slow_core: Core) -> None:
    """A link that got no answer may have been carried out: cancel sends the locker an
    unlink before the asset is compensated; the locker holds no link, the entry discarded."""
    core = slow_core
    ref = first_ref(core)
    key = await keys.create_key(core.pool, TENANT, keys.SCOPES, name="admin")
    async with api_client(core, key) as client:
        await inject(client, lockerRef=ref, fault="drop", count=1, command="link")
        deferred = await register(client, ref)
        assert deferred.status_code == 202, deferred.text
        assert deferred.json()["reason"] == "E_LOCKER_TIMEOUT"
        asset_id = deferred.json()["assetId"]
        entry = await entry_of(client, asset_id)
        assert (entry["status"], entry["retryCount"]) == ("pending", 0)

        cancelled = await client.post(f"/api/ops/assets/{asset_id}/cancel")
        # 200 when the unlink was answered within the link budget, else 202 (it goes on).
        assert cancelled.status_code in (200, 202), cancelled.text
        assert cancelled.json()["sagaStatus"] in ("compensating", "compensated")

        async def compensated() -> bool:
            return await asset_status(client, asset_id) == "compensated"

        await eventually(compensated, "the cancel's undo")
        assert links(core, ref) == {}
        assert sent(core, ref, "unlink") == 1
        shown = await client.get(f"/api/ops/retry-queue/{entry['id']}")
        assert shown.json()["status"] == "discarded"
        assert shown.json()["closedAt"] is not None


async def test_retry_queue_lists_newest_first_in_pages_and_filters(
    core: Core,
    client: httpx.AsyncClient,
    reader: httpx.AsyncClient,
    other_tenant: httpx.AsyncClient,
) -> None:
    """GET /api/ops/retry-queue: newest first, cursor pages, status and assetId filters;
    GET one entry with every field; 422 for bad filters, 404 unknown or another tenant's."""
    ids = await in_maintenance(core, client, 3)
    first = await reader.get("/api/ops/retry-queue", params={"limit": 2})
    assert first.status_code == 200, first.text
    page = first.json()
    second = (
        await reader.get("/api/ops/retry-queue", params={"limit": 2, "cursor": page["nextCursor"]})
    ).json()
    assert second["nextCursor"] is None
    listed = page["items"] + second["items"]
    assert [e["assetId"] for e in listed] == ids[::-1]
    assert {(e["status"], e["retryCount"], e["operation"]) for e in listed} == {
        ("pending", 0, "link")
    }

    entry = await entry_of(client, ids[0])
    shown = await reader.get(f"/api/ops/retry-queue/{entry['id']}")
    assert shown.status_code == 200
    assert shown.json() == entry
    assert set(entry) == {
        "id", "assetId", "lockerRef", "operation", "retryCount", "nextRetryAt", "lastError",
        "status", "sagaId", "firstErrorAt", "createdAt", "updatedAt", "closedAt",
    }  # fmt: skip
    assert entry["lockerRef"] == first_ref(core)
    assert entry["lastError"]["code"] == "E_LOCKER_UNREACHABLE"
    assert "maintenance" in entry["lastError"]["message"]
    asset = (await client.get(f"/api/assets/{ids[0]}")).json()
    assert entry["sagaId"] == asset["sagaId"]

    resolved = await client.get("/api/ops/retry-queue", params={"status": "resolved"})
    assert resolved.json() == {"items": [], "nextCursor": None}
    for params in ({"status": "stuck"}, {"assetId": "nope"}, {"limit": 0}, {"cursor": "!!"}):
        bad = await client.get("/api/ops/retry-queue", params=params)
        assert bad.status_code == 422, params
        assert bad.json()["error"]["code"] == "E_VALIDATION"
    for unknown in (str(uuid.uuid4()), "not-an-id"):
        assert (await client.get(f"/api/ops/retry-queue/{unknown}")).status_code == 404
    assert (await other_tenant.get(f"/api/ops/retry-queue/{entry['id']}")).status_code == 404
    assert (await other_tenant.get("/api/ops/retry-queue")).json()["items"] == []
    assets_only = await keys.create_key(core.pool, TENANT, ["assets:read"], name="no ops")
    async with api_client(core, assets_only) as weak:
        assert (await weak.get("/api/ops/retry-queue")).status_code == 403
        assert (await weak.get(f"/api/ops/retry-queue/{entry['id']}")).status_code == 403


async def test_maintenance_defers_links_uncounted_until_it_ends(
    core: Core, client: httpx.AsyncClient
) -> None:
    """In maintenance a registration answers 202 and its entry waits: a retry now sends no
    command and counts nothing. Ending maintenance retries it at once: linked, resolved."""
    ref = first_ref(core)
    until = datetime.now(UTC) + timedelta(hours=2)
    started = await client.post(
        f"/api/ops/lockers/{ref}/maintenance", json={"until": until.isoformat()}
    )
    assert started.status_code == 200, started.text
    assert (started.json()["lockerRef"], started.json()["wokenEntries"]) == (ref, 0)
    assert datetime.fromisoformat(started.json()["maintenanceUntil"]) == until
    deferred = await register(client, ref)
    assert deferred.status_code == 202, deferred.text
    assert deferred.json()["status"] == "pending_link"
    asset_id = deferred.json()["assetId"]
    entry = await entry_of(client, asset_id)
    assert (entry["status"], entry["retryCount"]) == ("pending", 0)
    assert abs(datetime.fromisoformat(entry["nextRetryAt"]) - until) < timedelta(seconds=1)

    retried = await client.post(f"/api/ops/retry-queue/{entry['id']}/retry")
    assert retried.status_code == 200, retried.text
    body = retried.json()
    assert (body["status"], body["retryCount"], body["assetStatus"]) == (
        "pending",
        0,
        "pending_link",
    )
    assert sent(core, ref, "link") == 0

    ended = await client.post(f"/api/ops/lockers/{ref}/maintenance", json={"until": None})
    assert ended.status_code == 200, ended.text
    assert ended.json() == {"lockerRef": ref, "maintenanceUntil": None, "wokenEntries": 1}

    async def linked() -> bool:
        return await asset_status(client, asset_id) in LINKED

    await eventually(linked)
    shown = (await client.get(f"/api/ops/retry-queue/{entry['id']}")).json()
    assert (shown["status"], shown["retryCount"]) == ("resolved", 0)
    assert sent(core, ref, "link") == 1
    for action in ("retry", "discard"):
        late = await client.post(f"/api/ops/retry-queue/{entry['id']}/{action}")
        assert late.status_code == 409, action
        assert "resolved" in late.json()["error"]["message"]


async def test_lockers_back_together_are_woken_in_one_statement_but_maintenance_waits(
    core: Core, client: httpx.AsyncClient
) -> None:
    """The lockers of one wake (a fleet back after a broker outage) have their deferred
    links retried at once, except a locker still in maintenance: its entry keeps its time."""
    assert core.fleet is not None
    kept, back = (d.ref for d in core.fleet.devices[:2])
    until = datetime.now(UTC) + timedelta(hours=2)
    deferred = {}
    for ref in (kept, back):
        started = await client.post(
            f"/api/ops/lockers/{ref}/maintenance", json={"until": until.isoformat()}
        )
        assert started.status_code == 200, started.text
        r = await register(client, ref)
        assert r.status_code == 202, r.text
        deferred[ref] = r.json()["assetId"]
    # The second locker's window ends without its own wake (as when it runs out).
    async with core.pool.connection() as conn:
        await conn.execute(
            "UPDATE lockers SET maintenance_until = NULL WHERE locker_ref = %s", [back]
        )

    assert await core.retry_queue.wake_lockers(kept, back, "no-such-locker") == 1

    async def linked() -> bool:
        return await asset_status(client, deferred[back]) in LINKED

    await eventually(linked)
    waiting = await entry_of(client, deferred[kept])
    assert waiting["status"] == "pending"
    assert abs(datetime.fromisoformat(waiting["nextRetryAt"]) - until) < timedelta(seconds=1)
    assert await asset_status(client, deferred[kept]) == "pending_link"
    assert sent(core, kept, "link") == 0


async def test_maintenance_refuses_bad_requests(
    core: Core,
    client: httpx.AsyncClient,
    reader: httpx.AsyncClient,
    other_tenant: httpx.AsyncClient,
) -> None:
    """maintenance: 422 beyond 30 days, for a time without offset or a bad body; 404 for an
    unknown or another tenant's locker; 403 without ops:write; a past until ends it."""
    ref = first_ref(core)
    path = f"/api/ops/lockers/{ref}/maintenance"
    far = (datetime.now(UTC) + timedelta(days=31)).isoformat()
    for body in (
        {"until": far},
        {"until": "2030-01-01T00:00:00"},
        {"until": "tomorrow"},
        {},
        {"until": None, "reason": "x"},
    ):
        bad = await client.post(path, json=body)
        assert bad.status_code == 422, body
        assert bad.json()["error"]["code"] == "E_VALIDATION"
    soon = {"until": (datetime.now(UTC) + timedelta(days=29)).isoformat()}
    assert (
        await client.post("/api/ops/lockers/no-such-locker/maintenance", json=soon)
    ).status_code == 404
    assert (await other_tenant.post(path, json=soon)).status_code == 404
    assert (await reader.post(path, json=soon)).status_code == 403
    assert (await client.post(path, json=soon)).json()["maintenanceUntil"] is not None
    past = {"until": (datetime.now(UTC) - timedelta(minutes=1)).isoformat()}
    assert (await client.post(path, json=past)).json()["maintenanceUntil"] is None
    assert (await register(client, ref)).status_code == 201


async def test_discard_holds_the_asset_until_an_operator_retries(
    core: Core, client: httpx.AsyncClient, reader: httpx.AsyncClient
) -> None:
    """discard: the entry ends discarded and is not woken when maintenance ends; the asset
    stays pending_link; a retry of the discarded entry then links it. 409 on a second discard."""
    ref = first_ref(core)
    [asset_id] = await in_maintenance(core, client)
    entry = await entry_of(client, asset_id)
    assert (await reader.post(f"/api/ops/retry-queue/{entry['id']}/discard")).status_code == 403
    assert (await client.post(f"/api/ops/retry-queue/{uuid.uuid4()}/discard")).status_code == 404

    discarded = await client.post(f"/api/ops/retry-queue/{entry['id']}/discard")
    assert discarded.status_code == 200, discarded.text
    body = discarded.json()
    assert (body["status"], body["nextRetryAt"], body["assetStatus"]) == (
        "discarded",
        None,
        "pending_link",
    )
    assert body["closedAt"] is not None
    twice = await client.post(f"/api/ops/retry-queue/{entry['id']}/discard")
    assert twice.status_code == 409
    assert "already discarded" in twice.json()["error"]["message"]

    ended = await client.post(f"/api/ops/lockers/{ref}/maintenance", json={"until": None})
    assert ended.json()["wokenEntries"] == 0
    assert await asset_status(client, asset_id) == "pending_link"
    assert sent(core, ref, "link") == 0

    retried = await client.post(f"/api/ops/retry-queue/{entry['id']}/retry")
    assert retried.status_code == 200, retried.text
    assert retried.json()["status"] == "resolved"
    assert retried.json()["assetStatus"] in LINKED
    assert core.fleet is not None
    assert links(core, ref) == {asset_id: core.fleet.device(ref).locker_id}
    assert (await client.post(f"/api/ops/assets/{asset_id}/cancel")).status_code == 409


async def test_retry_of_a_cancelled_registration_is_refused(
    core: Core, client: httpx.AsyncClient
) -> None:
    """After cancel, the discarded entry cannot be retried (409): nothing reopens it."""
    [asset_id] = await in_maintenance(core, client)
    entry = await entry_of(client, asset_id)
    assert (await client.post(f"/api/ops/assets/{asset_id}/cancel")).status_code == 200
    refused = await client.post(f"/api/ops/retry-queue/{entry['id']}/retry")
    assert refused.status_code == 409
    assert "is compensated" in refused.json()["error"]["message"]
    assert (await entry_of(client, asset_id))["status"] == "discarded"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/ops/retry-queue"),
        ("POST", "/api/ops/assets/{id}/cancel"),
        ("POST", "/api/ops/retry-queue/{id}/retry"),
    ],
)
async def test_ops_routes_need_a_key(core: Core, method: str, path: str) -> None:
    """Without an API key every ops route answers 401 in the envelope."""
    async with api_client(core, "") as anonymous:
        anonymous.headers.pop("Authorization")
        response = await anonymous.request(method, path.format(id=uuid.uuid4()))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "E_UNAUTHORIZED"
