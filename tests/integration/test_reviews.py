"""Human review (docs/architecture.md §5): the queue, decisions, and expiry after the timeout.

A review comes from evidence whose GPS fix is too imprecise to place inside the geofence
(the simulator's ``low_accuracy`` defect). The 24 h timeout is never waited for: the test
moves the review's due time into the past in the database, as if the clock had moved.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg

from proveniq_core import db
from proveniq_core.ledger import keys
from proveniq_core.service import Core
from tests.helpers import eventually
from tests.integration.conftest import TENANT, api_client, core_running, first_ref
from tests.integration.test_verify_outcomes import (
    delivered,
    events_to,
    register,
    settled,
    spoil,
)


async def open_review(core: Core, client: httpx.AsyncClient) -> dict[str, Any]:
    """Register an asset whose evidence needs review; return its review from the queue."""
    ref = first_ref(core)
    await spoil(client, ref, "low_accuracy")
    asset_id = await register(client, ref)
    assert (await settled(client, asset_id))["status"] == "manual_review"
    items = (await client.get("/api/reviews")).json()["items"]
    [review] = [r for r in items if r["assetId"] == asset_id]
    return review  # type: ignore[no-any-return]


async def audit_of(core: Core, review_id: str) -> list[db.Row]:
    async with db.connection(core.pool) as conn:
        return await db.fetch_all(
            conn, "audit_for_entity", {"entity_type": "review", "entity_id": review_id}
        )


async def open_alerts(client: httpx.AsyncClient, review_id: str) -> list[dict[str, Any]]:
    params = {"code": "E_REVIEW_EXPIRED", "open": "true"}
    items = (await client.get("/api/ops/alerts", params=params)).json()["items"]
    return [a for a in items if a["subject"]["reviewId"] == review_id]


async def make_due(database_url: str, review_id: str) -> None:
    """Move the clock past the review's due time."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(
            "UPDATE reviews SET due_at = now() - interval '1 second' WHERE id = %s", (review_id,)
        )


async def test_manual_review_opens_a_review_with_its_reasons_and_evidence(
    core: Core, client: httpx.AsyncClient
) -> None:
    """The queue shows the review pending, due 24 h after it opened, with the analysis'
    reasons and a link to each photo; review.required is emitted."""
    hook = await events_to(client, "review.required")
    review = await open_review(core, client)
    assert review["status"] == "pending"
    assert review["decidedAt"] is None and review["decidedBy"] is None
    assert len(review["reasons"]) == 1 and "too imprecise" in review["reasons"][0]
    assert review["checks"]["gps_in_geofence"]["verdict"] == "review"
    due = datetime.fromisoformat(review["dueAt"]) - datetime.fromisoformat(review["createdAt"])
    assert due == timedelta(hours=24)
    [photo] = review["evidence"]
    served = await client.get(photo["links"]["content"])
    assert served.status_code == 200 and served.headers["content-type"] == "image/jpeg"
    [event] = await delivered(client, hook, 1)
    assert event["data"] == {
        "reviewId": review["reviewId"],
        "assetId": review["assetId"],
        "dueAt": event["data"]["dueAt"],
    }
    assert datetime.fromisoformat(event["data"]["dueAt"]) == datetime.fromisoformat(review["dueAt"])


async def test_approve_verifies_the_asset_once_and_is_audited_with_the_name(
    core: Core, client: httpx.AsyncClient
) -> None:
    """Approve: the asset and its verification become verified, the decision is audited with
    the key's name and emits verification.completed; a second decision is 409 and changes
    nothing."""
    review = await open_review(core, client)
    hook = await events_to(client, "verification.completed")
    path = f"/api/reviews/{review['reviewId']}/decision"
    resp = await client.post(path, json={"decision": "approve", "note": "serial matches"})
    assert resp.status_code == 200, resp.text
    decided = resp.json()
    assert decided["status"] == "approved"
    assert decided["decidedBy"] == "test admin"
    assert decided["note"] == "serial matches"
    asset = (await client.get(f"/api/assets/{review['assetId']}")).json()
    assert asset["status"] == "verified"
    assert asset["verification"]["status"] == "verified"

    again = await client.post(path, json={"decision": "reject", "note": "second thoughts"})
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "E_CONFLICT"
    assert (await client.get(f"/api/assets/{review['assetId']}")).json()["status"] == "verified"
    assert (await client.get("/api/reviews")).json()["items"] == []
    done = (await client.get("/api/reviews", params={"status": "approved"})).json()["items"]
    assert [r["reviewId"] for r in done] == [review["reviewId"]]

    trail = await audit_of(core, review["reviewId"])
    assert [(r["action"], r["actor"]) for r in trail] == [
        ("review.opened", "system:verify"),
        ("review.approved", "test admin"),
    ]
    assert trail[1]["request_id"] == resp.headers["x-request-id"]
    [event] = await delivered(client, hook, 1)
    assert event["data"]["outcome"] == "verified"
    assert event["data"]["reviewId"] == review["reviewId"]


async def test_reject_rejects_the_asset(core: Core, client: httpx.AsyncClient) -> None:
    """Reject: the asset and its verification become rejected, with the reviewer's note."""
    review = await open_review(core, client)
    resp = await client.post(
        f"/api/reviews/{review['reviewId']}/decision",
        json={"decision": "reject", "note": "not the item registered"},
    )
    assert resp.status_code == 200
    assert resp.json()["status"] == "rejected"
    asset = (await client.get(f"/api/assets/{review['assetId']}")).json()
    assert (asset["status"], asset["verification"]["status"]) == ("rejected", "rejected")


async def test_decisions_need_the_scope_and_the_tenant(
    core: Core, client: httpx.AsyncClient
) -> None:
    """Without reviews:decide: 403; another tenant: 404 and an empty queue; bad bodies: 422."""
    review = await open_review(core, client)
    path = f"/api/reviews/{review['reviewId']}/decision"
    reader = await keys.create_key(core.pool, TENANT, ["assets:read", "assets:write"])
    async with api_client(core, reader) as http:
        assert (await http.get("/api/reviews")).status_code == 403
        denied = await http.post(path, json={"decision": "approve"})
        assert denied.status_code == 403
        assert denied.json()["error"]["code"] == "E_FORBIDDEN"
    other = await keys.create_key(core.pool, "globex", keys.SCOPES)
    async with api_client(core, other) as http:
        assert (await http.get("/api/reviews")).json()["items"] == []
        hidden = await http.post(path, json={"decision": "approve"})
        assert hidden.status_code == 404
        assert hidden.json()["error"]["code"] == "E_NOT_FOUND"
    for body in ({"decision": "maybe"}, {"decision": "approve", "extra": 1}, {}):
        assert (await client.post(path, json=body)).status_code == 422, body
    unknown = await client.post(
        f"/api/reviews/{uuid.uuid4()}/decision", json={"decision": "reject", "note": "no"}
    )
    assert unknown.status_code == 404
    assert (await client.get(f"/api/assets/{review['assetId']}")).json()["status"] == (
        "manual_review"
    )


async def test_the_queue_is_oldest_first_in_pages(core: Core, client: httpx.AsyncClient) -> None:
    """Two reviews, one per page, oldest first; the cursor ends."""
    first = await open_review(core, client)
    second = await open_review(core, client)
    page = (await client.get("/api/reviews", params={"limit": 1})).json()
    assert [r["reviewId"] for r in page["items"]] == [first["reviewId"]]
    rest = (await client.get("/api/reviews", params={"cursor": page["nextCursor"]})).json()
    assert [r["reviewId"] for r in rest["items"]] == [second["reviewId"]]
    assert rest["nextCursor"] is None


async def test_an_undecided_review_expires_with_an_alert_and_can_still_be_decided(
    core: Core, client: httpx.AsyncClient, database_url: str
) -> None:
    """Past its due time the review expires and raises an ops alert; a late decision still
    settles the asset and resolves the alert."""
    review = await open_review(core, client)
    assert await open_alerts(client, review["reviewId"]) == []
    await make_due(database_url, review["reviewId"])
    [alert] = await eventually(lambda: open_alerts(client, review["reviewId"]))
    assert alert["severity"] == "critical"
    assert alert["subject"]["assetId"] == review["assetId"]
    [expired] = (await client.get("/api/reviews", params={"status": "expired"})).json()["items"]
    assert expired["reviewId"] == review["reviewId"] and expired["expiredAt"] is not None

    resp = await client.post(
        f"/api/reviews/{review['reviewId']}/decision", json={"decision": "approve"}
    )
    assert resp.status_code == 200
    assert (await client.get(f"/api/assets/{review['assetId']}")).json()["status"] == "verified"
    assert await open_alerts(client, review["reviewId"]) == []


async def test_expiry_survives_a_restart_of_core(
    database_url: str, mqtt_url: str, tmp_path: Path
) -> None:
    """A review opened before Core stops expires after it starts again (the due time is in
    PostgreSQL); review_timeout sets how long a review waits."""
    async with core_running(database_url, mqtt_url, tmp_path, review_timeout=3600) as core:
        key = await keys.create_key(core.pool, TENANT, keys.SCOPES)
        async with api_client(core, key) as client:
            review = await open_review(core, client)
    created = datetime.fromisoformat(review["createdAt"])
    assert datetime.fromisoformat(review["dueAt"]) - created == timedelta(hours=1)

    await make_due(database_url, review["reviewId"])  # the hour passes while Core is down
    async with (
        core_running(database_url, mqtt_url, tmp_path) as core,
        api_client(core, key) as client,
    ):
        [alert] = await eventually(lambda: open_alerts(client, review["reviewId"]))
        assert alert["code"] == "E_REVIEW_EXPIRED"
        statuses = (await client.get("/api/reviews")).json()["items"]
        assert [(r["reviewId"], r["status"]) for r in statuses] == [(review["reviewId"], "expired")]
