"""Webhook endpoints (a tenant's subscriptions) and manual redelivery; every change audited.

Another tenant's endpoint or delivery is "not found". An endpoint is ``active`` or
``disabled``: a disabled one gets no new events and its pending deliveries wait; enabling it
again resumes them.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from proveniq_core import db
from proveniq_core.errors import ConflictError, NotFoundError
from proveniq_core.ledger import alerts, audit

ACTOR = "system:webhooks"
ALERT_CODE = "E_WEBHOOK_FAILING"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A tenant's subscription: where its events go. The signing secret stays in the database."""

    id: uuid.UUID
    tenant_id: str
    url: str
    events: tuple[str, ...]
    status: Literal["active", "disabled"]
    disabled_reason: str | None
    disabled_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: db.Row) -> Endpoint:
        return cls(
            id=row["id"],
            tenant_id=row["tenant_id"],
            url=row["url"],
            events=tuple(row["events"]),
            status=row["status"],
            disabled_reason=row["disabled_reason"],
            disabled_at=row["disabled_at"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event sent to one endpoint: its state and the event it carries."""

    id: uuid.UUID
    endpoint_id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    event_at: datetime
    data: dict[str, Any]
    status: Literal["pending", "delivering", "delivered", "failed"]
    next_attempt_at: datetime
    last_status_code: int | None
    last_error: str | None
    redelivery_of: uuid.UUID | None
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: db.Row) -> Delivery:
        """From a row of ``webhook_deliveries`` joined with its event's type, data and time."""
        return cls(
            id=row["id"],
            endpoint_id=row["endpoint_id"],
            event_id=row["event_id"],
            event_type=row["type"],
            event_at=row["event_at"],
            data=row["data"],
            status=row["status"],
            next_attempt_at=row["next_attempt_at"],
            last_status_code=row["last_status_code"],
            last_error=row["last_error"],
            redelivery_of=row["redelivery_of"],
            created_at=row["created_at"],
            finished_at=row["finished_at"],
        )


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    """One HTTP attempt of a delivery, as logged."""

    attempt: int
    attempted_at: datetime
    duration_ms: float
    status_code: int | None
    error: str | None


def alert_key(endpoint_id: Any) -> str:
    return f"webhook:{endpoint_id}:failing"


def _uuid(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise NotFoundError(f"{what} {value} not found") from None


def _audited(endpoint: Endpoint) -> dict[str, Any]:
    return {"url": endpoint.url, "events": list(endpoint.events), "status": endpoint.status}


async def create(
    conn: db.Conn,
    *,
    tenant_id: str,
    url: str,
    events: Sequence[str],
    secret: str,
    actor: str,
    request_id: str | None = None,
) -> Endpoint:
    """A new active endpoint; ``secret`` as stored, sealed (``webhooks.crypto``)."""
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
    endpoint = Endpoint.from_row(row)
    await audit.record(
        conn,
        actor=actor,
        action="webhook.created",
        entity_type="webhook",
        entity_id=str(endpoint.id),
        tenant_id=tenant_id,
        after=_audited(endpoint),
        request_id=request_id,
    )
    return endpoint


async def get(conn: db.Conn, tenant_id: str, webhook_id: str, *, lock: bool = False) -> Endpoint:
    """The tenant's endpoint; with ``lock``, row-locked until the transaction ends (so a
    concurrent delete cannot slip between reading it and changing it)."""
    row = await db.fetch_one(
        conn,
        "lock_webhook_endpoint" if lock else "get_webhook_endpoint",
        {"id": _uuid(webhook_id, "webhook"), "tenant_id": tenant_id},
    )
    if row is None:
        raise NotFoundError(f"webhook {webhook_id} not found")
    return Endpoint.from_row(row)


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
        before=_audited(Endpoint.from_row(row)),
        request_id=request_id,
    )


async def enable(
    conn: db.Conn, tenant_id: str, webhook_id: str, *, actor: str, request_id: str | None = None
) -> Endpoint:
    """Make a disabled endpoint active again; its waiting deliveries resume."""
    before = await get(conn, tenant_id, webhook_id, lock=True)
    row = await db.fetch_one(
        conn, "enable_webhook_endpoint", {"id": before.id, "tenant_id": tenant_id}
    )
    if row is None:  # cannot happen under the lock; never an assertion (a 500)
        raise NotFoundError(f"webhook {webhook_id} not found")
    after = Endpoint.from_row(row)
    if before.status != "active":
        await audit.record(
            conn,
            actor=actor,
            action="webhook.enabled",
            entity_type="webhook",
            entity_id=str(after.id),
            tenant_id=tenant_id,
            before=_audited(before),
            after=_audited(after),
            request_id=request_id,
        )
        await db.execute(conn, "resolve_alerts", {"dedup_keys": [alert_key(after.id)]})
        await db.execute(conn, "notify_webhooks")
    return after


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
    endpoint = Endpoint.from_row(row)
    await audit.record(
        conn,
        actor=ACTOR,
        action="webhook.disabled",
        entity_type="webhook",
        entity_id=str(endpoint.id),
        tenant_id=endpoint.tenant_id,
        after={**_audited(endpoint), "reason": reason},
    )
    if alert is not None:
        await alerts.raise_alert(
            conn,
            code=ALERT_CODE,
            severity="warning",
            message=f"webhook endpoint {endpoint.url} is disabled: {reason}",
            dedup_key=alert_key(endpoint.id),
            tenant_id=endpoint.tenant_id,
            subject={"webhookId": str(endpoint.id), "url": endpoint.url, **alert},
        )


async def get_delivery(conn: db.Conn, endpoint: Endpoint, delivery_id: str) -> Delivery:
    row = await db.fetch_one(
        conn,
        "get_webhook_delivery",
        {"id": _uuid(delivery_id, "delivery"), "endpoint_id": endpoint.id},
    )
    if row is None:
        raise NotFoundError(f"delivery {delivery_id} not found")
    return Delivery.from_row(row)


async def redeliver(
    conn: db.Conn,
    tenant_id: str,
    webhook_id: str,
    delivery_id: str,
    *,
    actor: str,
    request_id: str | None = None,
) -> Delivery:
    """A new delivery of the same message (same ``webhook-id``) to the endpoint, due now,
    with a fresh retry schedule. ``ConflictError`` while the endpoint is disabled."""
    endpoint = await get(conn, tenant_id, webhook_id, lock=True)
    original = await get_delivery(conn, endpoint, delivery_id)
    if endpoint.status != "active":
        raise ConflictError(
            f"webhook {webhook_id} is disabled ({endpoint.disabled_reason}); enable it first"
        )
    new_id = uuid.uuid4()
    await db.execute(conn, "redeliver_webhook", {"id": new_id, "of": original.id})
    await db.execute(conn, "notify_webhooks")
    await audit.record(
        conn,
        actor=actor,
        action="webhook.redelivered",
        entity_type="webhook",
        entity_id=str(endpoint.id),
        tenant_id=tenant_id,
        after={"deliveryId": str(new_id), "redeliveryOf": str(original.id)},
        request_id=request_id,
    )
    return await get_delivery(conn, endpoint, str(new_id))


async def attempts_by_delivery(
    conn: db.Conn, deliveries: Sequence[Delivery]
) -> dict[uuid.UUID, list[DeliveryAttempt]]:
    """The attempt log of each delivery, oldest first."""
    found: dict[uuid.UUID, list[DeliveryAttempt]] = {d.id: [] for d in deliveries}
    if found:
        for row in await db.fetch_all(conn, "list_webhook_attempts", {"ids": list(found)}):
            found[row["delivery_id"]].append(
                DeliveryAttempt(
                    attempt=row["attempt"],
                    attempted_at=row["attempted_at"],
                    duration_ms=row["duration_ms"],
                    status_code=row["status_code"],
                    error=row["error"],
                )
            )
    return found
