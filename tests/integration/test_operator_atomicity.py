"""Operator actions check, change and audit in one transaction.

Two operators acting on one retry-queue entry at once: exactly one wins, the other gets 409,
and the audit log holds exactly one row of the action. The test lines both requests up on
a row lock of its own, so they really do meet. And when the audit insert fails inside the
action's transaction, the client gets an error envelope and the API shows nothing changed:
the change rolled back with its audit row.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest_asyncio

from proveniq_core import db
from proveniq_core.api.app import create_app
from proveniq_core.ledger import keys
from proveniq_core.service import Core
from tests.integration import audit_probe
from tests.integration.audit_probe import plain_tracebacks as plain_tracebacks
from tests.integration.conftest import TENANT, core_running, first_ref


async def deferred_entry(core: Core, client: httpx.AsyncClient) -> tuple[str, dict[str, Any]]:
    """An asset held pending_link by its locker's maintenance, and its pending entry."""
    until = datetime.now(UTC) + timedelta(hours=1)
    path = f"/api/ops/lockers/{first_ref(core)}/maintenance"
    assert (await client.post(path, json={"until": until.isoformat()})).status_code == 200
    body = {"name": "Watch", "category": "watch", "lockerRef": first_ref(core)}
    deferred = await client.post("/api/assets", json=body)
    assert deferred.status_code == 202, deferred.text
    asset_id = str(deferred.json()["assetId"])
    page = (await client.get("/api/ops/retry-queue", params={"assetId": asset_id})).json()
    [entry] = page["items"]
    return asset_id, entry


async def audit_actions(core: Core, entry_id: str) -> list[tuple[str, str | None]]:
    """The audit rows of the entry: (action, request id), oldest first."""
    async with db.connection(core.pool) as conn:
        rows = await db.fetch_all(
            conn, "audit_for_entity", {"entity_type": "retry_entry", "entity_id": entry_id}
        )
    return [(r["action"], r["request_id"]) for r in rows]


async def blocked_by(gate: psycopg.AsyncConnection[Any], n: int, within: float = 10.0) -> None:
    """Wait until ``n`` sessions wait on row locks: the one ``gate`` holds, or each other's
    while queued behind it."""
    deadline = time.monotonic() + within
    async with await psycopg.AsyncConnection.connect(gate.info.dsn, autocommit=True) as probe:
        while True:
            cur = await probe.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            row = await cur.fetchone()
            if row is not None and row[0] >= n:
                return
            assert time.monotonic() < deadline, f"{n} requests did not queue on the lock"
            await asyncio.sleep(0.02)


def assert_conflict(response: httpx.Response, words: str) -> None:
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert (error["code"], error["requestId"]) == ("E_CONFLICT", response.headers["x-request-id"])
    assert words in error["message"]


async def test_two_discards_at_once_one_wins_and_is_audited_once(
    core: Core, client: httpx.AsyncClient, database_url: str
) -> None:
    """Two discards of one entry, queued on its row together: one 200, one 409 "already
    discarded", and exactly one retry_entry.discarded audit row, the winner's."""
    _, entry = await deferred_entry(core, client)
    path = f"/api/ops/retry-queue/{entry['id']}/discard"
    async with await psycopg.AsyncConnection.connect(database_url) as gate:
        await gate.execute("SELECT FROM retry_queue WHERE id = %s FOR UPDATE", (entry["id"],))
        both = [asyncio.create_task(client.post(path)) for _ in range(2)]
        await blocked_by(gate, 2)
    responses = await asyncio.gather(*both)
    [won] = [r for r in responses if r.status_code == 200]
    [lost] = [r for r in responses if r is not won]
    assert won.json()["status"] == "discarded"
    assert_conflict(lost, "already discarded")
    assert await audit_actions(core, entry["id"]) == [
        ("retry_entry.discarded", won.headers["x-request-id"])
    ]


async def test_two_retries_at_once_one_wins_and_is_audited_once(
    core: Core, client: httpx.AsyncClient, database_url: str
) -> None:
    """Two retries of one entry, queued on its row together: the loser gets 409 while the
    winner's saga still runs (held here on the asset's row), the winner then 200; exactly
    one retry_entry.retried audit row, the winner's (its saga's re-park audits its own)."""
    asset_id, entry = await deferred_entry(core, client)
    path = f"/api/ops/retry-queue/{entry['id']}/retry"
    async with await psycopg.AsyncConnection.connect(database_url) as gate:
        # The asset's row stays locked until the end: the winner's saga waits on it once its
        # retry has committed. The entry's row is released when both requests wait on it.
        await gate.execute("SELECT FROM assets WHERE id = %s FOR UPDATE", (asset_id,))
        await gate.execute("SAVEPOINT entry")
        await gate.execute("SELECT FROM retry_queue WHERE id = %s FOR UPDATE", (entry["id"],))
        both = [asyncio.create_task(client.post(path)) for _ in range(2)]
        await blocked_by(gate, 2)
        await gate.execute("ROLLBACK TO SAVEPOINT entry")
        done, _ = await asyncio.wait(both, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        [first] = done
        assert_conflict(first.result(), "being retried right now")
    won = await next(t for t in both if t is not first)
    assert won.status_code == 200, won.text
    assert (won.json()["status"], won.json()["assetStatus"]) == ("pending", "pending_link")
    actions = await audit_actions(core, entry["id"])
    assert [a for a in actions if a[0] == "retry_entry.retried"] == [
        ("retry_entry.retried", won.headers["x-request-id"])
    ]
    assert [a for a, _ in actions] == ["retry_entry.retried", "retry_entry.deferred"]


@pytest_asyncio.fixture
async def probed(
    database_url: str, mqtt_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Core, httpx.AsyncClient]]:
    """A running Core whose database can be told to refuse audit inserts, and a client."""
    await audit_probe.install(database_url)
    async with core_running(database_url, mqtt_url, tmp_path) as core:
        key = await keys.create_key(core.pool, TENANT, keys.SCOPES, name="operator")
        # As a server does: the app's 500 answer reaches the client, the error only the log.
        transport = httpx.ASGITransport(app=create_app(core), raise_app_exceptions=False)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://core.test",
            headers={"Authorization": f"Bearer {key}"},
        ) as client:
            yield core, client


async def seen(client: httpx.AsyncClient, asset_id: str, entry_id: str) -> dict[str, Any]:
    """What the API shows of a held registration: the asset, its entry and its saga."""
    asset = (await client.get(f"/api/assets/{asset_id}")).json()
    entry = (await client.get(f"/api/ops/retry-queue/{entry_id}")).json()
    saga = (await client.get(f"/api/ops/sagas/{asset['sagaId']}")).json()
    return {"asset": asset, "entry": entry, "saga": saga}


async def internal_error(client: httpx.AsyncClient, path: str, body: Any = None) -> None:
    """POST ``path``: a clean 500 envelope, with the taxonomy's message and the request's
    id, nothing of the half-done work."""
    request_id = uuid.uuid4().hex
    response = await client.post(path, json=body, headers={"X-Request-ID": request_id})
    assert response.status_code == 500, response.text
    assert response.json() == {
        "error": {
            "code": "E_INTERNAL",
            "message": "Internal error. Operations team notified.",
            "severity": "critical",
            "retryable": True,
            "requestId": request_id,
        }
    }


async def test_a_failing_audit_insert_takes_the_operator_change_with_it(
    probed: tuple[Core, httpx.AsyncClient], database_url: str
) -> None:
    """With the audit insert of each action failing inside its transaction, retry, discard
    and cancel answer a 500 envelope and the API shows the asset, the entry and the saga as
    they were, with no audit row; once the fault is gone each action works."""
    core, client = probed
    asset_id, entry = await deferred_entry(core, client)
    before = await seen(client, asset_id, entry["id"])
    for action, path in (
        ("retry_entry.retried", f"/api/ops/retry-queue/{entry['id']}/retry"),
        ("retry_entry.discarded", f"/api/ops/retry-queue/{entry['id']}/discard"),
        ("asset.cancel", f"/api/ops/assets/{asset_id}/cancel"),
    ):
        await audit_probe.arm(database_url, action)
        await internal_error(client, path)
        assert await seen(client, asset_id, entry["id"]) == before, action
        await audit_probe.disarm(database_url)
    assert await audit_actions(core, entry["id"]) == []
    assert core.fleet is not None
    received = core.fleet.snapshot()[first_ref(core)]["received"]
    assert (received.get("link", 0), received.get("unlink", 0)) == (0, 0)

    retried = await client.post(f"/api/ops/retry-queue/{entry['id']}/retry")
    assert retried.status_code == 200, retried.text
    cancelled = await client.post(f"/api/ops/assets/{asset_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "compensated"


async def test_a_failing_audit_insert_leaves_the_locker_out_of_maintenance(
    probed: tuple[Core, httpx.AsyncClient], database_url: str
) -> None:
    """Maintenance whose audit insert fails: a 500 envelope, and the locker is not in
    maintenance (a registration to it links at once: 201)."""
    core, client = probed
    ref = first_ref(core)
    until = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    await audit_probe.arm(database_url, "locker.maintenance")
    await internal_error(client, f"/api/ops/lockers/{ref}/maintenance", {"until": until})
    await audit_probe.disarm(database_url)
    body = {"name": "Watch", "category": "watch", "lockerRef": ref}
    assert (await client.post("/api/assets", json=body)).status_code == 201
