"""Webhook endpoints (a tenant's subscriptions) and manual redelivery; every change audited.

Another tenant's endpoint or delivery is "not found". An endpoint is ``active`` or
``disabled``: a disabled one gets no new events and its pending deliveries wait; enabling it
again resumes them.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from proveniq_core import db
from proveniq_core.errors import ConflictError, NotFoundError
from proveniq_core.ledger import audit
from proveniq_core.ops import alerts

ACTOR = "system:webhooks"
ALERT_CODE = "E_WEBHOOK_FAILING"


def alert_key(endpoint_id: Any) -> str:
    return f"webhook:{endpoint_id}:failing"


def _uuid(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise NotFoundError(f"{what} {value} not found") from None


def _audited(row: db.Row) -> dict[str, Any]:
    return {"url": row["url"], "events": row["events"], "status": row["status"]}


async def create(
    conn: db.Conn,
    *,
    tenant_id: str,
    url: str,
    events: Sequence[str],
    secret: str,
    actor: str,
    request_id: str | None = None,
) -> db.Row:
    row = await db.fetch_one(
        conn,
        "insert_webhook_endpoint",
        {
            "id": uuid.uuid4(),
            "tenant_id": tenant_id,
            "url": url,
            "events": list(events),
            "secret": secret,
        },
    )
    assert row is not None
    await audit.record(
        conn,
        actor=actor,
        action="webhook.created",
        entity_type="webhook",
        entity_id=str(row["id"]),
        tenant_id=tenant_id,
        after=_audited(row),
        request_id=request_id,
    )
    return row


async def get(conn: db.Conn, tenant_id: str, webhook_id: str) -> db.Row:
    row = await db.fetch_one(
        conn, "get_webhook_endpoint", {"id": _uuid(webhook_id, "webhook"), "tenant_id": tenant_id}
    )
    if row is None:
        raise NotFoundError(f"webhook {webhook_id} not found")
    return row


async def delete(
    conn: db.Conn, tenant_id: str, webhook_id: str, *, actor: str, request_id: str | None = None
) -> None:
    """Delete the endpoint with its deliveries and their log."""
    row = await db.fetch_one(
        conn,
        "delete_webhook_endpoint",
        {"id": _uuid(webhook_id, "webhook"), "tenant_id": tenant_id},
    )
    if row is None:
        raise NotFoundError(f"webhook {webhook_id} not found")
    await audit.record(
        conn,
        actor=actor,
        action="webhook.deleted",
        entity_type="webhook",
        entity_id=str(row["id"]),
        tenant_id=tenant_id,
        before=_audited(row),
        request_id=request_id,
    )


async def enable(
    conn: db.Conn, tenant_id: str, webhook_id: str, *, actor: str, request_id: str | None = None
) -> db.Row:
    """Make a disabled endpoint active again; its waiting deliveries resume. One that is
    active already is left as it is (nothing changes, nothing is audited)."""
    before = await get(conn, tenant_id, webhook_id)
    row = await db.fetch_one(
        conn, "enable_webhook_endpoint", {"id": before["id"], "tenant_id": tenant_id}
    )
    if row is None:
        return before
    await audit.record(
        conn,
        actor=actor,
        action="webhook.enabled",
        entity_type="webhook",
        entity_id=str(row["id"]),
        tenant_id=tenant_id,
        before=_audited(before),
        after=_audited(row),
        request_id=request_id,
    )
    await db.execute(conn, "resolve_alerts", {"dedup_keys": [alert_key(row["id"])]})
    await db.execute(conn, "notify_webhooks")
    return row


async def disable(
    conn: db.Conn, endpoint_id: Any, reason: str, *, alert: dict[str, Any] | None = None
) -> None:
    """Disable the endpoint (a delivery worker's decision) and, with ``alert`` (its subject),
    raise the ops alert that says so, which emits ``ops.alert`` to the tenant's other
    endpoints."""
    row = await db.fetch_one(
        conn, "disable_webhook_endpoint", {"id": endpoint_id, "reason": reason}
    )
    if row is None:
        return  # already disabled, or deleted
    await audit.record(
        conn,
        actor=ACTOR,
        action="webhook.disabled",
        entity_type="webhook",
        entity_id=str(row["id"]),
        tenant_id=row["tenant_id"],
        after={**_audited(row), "reason": reason},
    )
    if alert is not None:
        await alerts.raise_alert(
            conn,
            code=ALERT_CODE,
            severity="warning",
            message=f"webhook endpoint {row['url']} is disabled: {reason}",
            dedup_key=alert_key(row["id"]),
            tenant_id=row["tenant_id"],
            subject={"webhookId": str(row["id"]), "url": row["url"], **alert},
        )


async def get_delivery(conn: db.Conn, endpoint: db.Row, delivery_id: str) -> db.Row:
    row = await db.fetch_one(
        conn,
        "get_webhook_delivery",
        {"id": _uuid(delivery_id, "delivery"), "endpoint_id": endpoint["id"]},
    )
    if row is None:
        raise NotFoundError(f"delivery {delivery_id} not found")
    return row


async def redeliver(
    conn: db.Conn,
    tenant_id: str,
    webhook_id: str,
    delivery_id: str,
    *,
    actor: str,
    request_id: str | None = None,
) -> db.Row:
    """A new delivery of the same message (same ``webhook-id``) to the endpoint, due now,
    with a fresh retry schedule. ``ConflictError`` while the endpoint is disabled."""
    endpoint = await get(conn, tenant_id, webhook_id)
    original = await get_delivery(conn, endpoint, delivery_id)
    if endpoint["status"] != "active":
        raise ConflictError(
            f"webhook {webhook_id} is disabled ({endpoint['disabled_reason']}); enable it first"
        )
    new_id = uuid.uuid4()
    await db.execute(conn, "redeliver_webhook", {"id": new_id, "of": original["id"]})
    await db.execute(conn, "notify_webhooks")
    await audit.record(
        conn,
        actor=actor,
        action="webhook.redelivered",
        entity_type="webhook",
        entity_id=str(endpoint["id"]),
        tenant_id=tenant_id,
        after={"deliveryId": str(new_id), "redeliveryOf": str(original["id"])},
        request_id=request_id,
    )
    return await get_delivery(conn, endpoint, str(new_id))


async def attempts_by_delivery(conn: db.Conn, deliveries: list[db.Row]) -> dict[Any, list[db.Row]]:
    """The attempt log of each delivery, oldest first."""
    found: dict[Any, list[db.Row]] = {d["id"]: [] for d in deliveries}
    if found:
        for row in await db.fetch_all(conn, "list_webhook_attempts", {"ids": list(found)}):
            found[row["delivery_id"]].append(row)
    return found
