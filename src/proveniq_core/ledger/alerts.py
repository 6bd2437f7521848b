"""Ops alerts: stored in the ledger, one open alert per cause, counted while it repeats.

Core resolves an alert when what raised it is settled; an operator may acknowledge one
("seen, on it") or resolve it by hand, each audited under their name.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

import structlog

from proveniq_core import db
from proveniq_core.errors import ConflictError, NotFoundError
from proveniq_core.ledger import audit, outbox

log = structlog.get_logger(__name__)

Severity = Literal["info", "warning", "critical"]


async def raise_alert(
    conn: db.Conn,
    *,
    code: str,
    severity: Severity,
    message: str,
    dedup_key: str,
    tenant_id: str | None = None,
    subject: dict[str, Any] | None = None,
) -> db.Row:
    """Open an alert for ``dedup_key``, or count one more occurrence of the open one.

    Call it inside the transaction of the state change that warrants it, so the alert
    exists exactly when the change does. Opening a tenant's alert emits the webhook event
    ``ops.alert`` (a repeat of an open alert only counts).
    """
    row = await db.fetch_one(
        conn,
        "insert_alert",
        {
            "id": str(uuid.uuid4()),
            "dedup_key": dedup_key,
            "code": code,
            "severity": severity,
            "message": message,
            "tenant_id": tenant_id,
            "subject": db.jsonb(subject or {}),
        },
    )
    assert row is not None
    if tenant_id is not None and row["count"] == 1:
        await outbox.emit(conn, tenant_id, "ops.alert", alert_data(row))
    log.warning("ops_alert", code=code, severity=severity, dedup_key=dedup_key, count=row["count"])
    return row


def alert_data(row: db.Row) -> dict[str, Any]:
    """What an ``ops.alert`` webhook event says about the alert."""
    return {
        "alertId": str(row["id"]),
        "code": row["code"],
        "severity": row["severity"],
        "message": row["message"],
        "subject": row["subject"],
        "firstAt": row["first_at"].isoformat(),
    }


async def _operator_change(
    pool: db.Pool,
    query: str,
    action: str,
    *,
    alert_id: str,
    tenant_id: str,
    actor: str,
    request_id: str | None,
) -> db.Row:
    try:
        uuid.UUID(alert_id)
    except ValueError:
        raise NotFoundError(f"alert {alert_id} not found") from None
    params = {"id": alert_id, "tenant_id": tenant_id}
    async with db.transaction(pool) as conn:
        before = await db.fetch_one(conn, "get_alert_for_update", params)
        if before is None:
            raise NotFoundError(f"alert {alert_id} not found")
        if before["resolved_at"] is not None:
            raise ConflictError(
                f"alert {alert_id} is already resolved",
                details={"resolvedAt": before["resolved_at"].isoformat()},
            )
        row = await db.fetch_one(conn, query, params | {"actor": actor})
        assert row is not None
        await audit.record(
            conn,
            actor=actor,
            action=action,
            entity_type="ops_alert",
            entity_id=alert_id,
            tenant_id=tenant_id,
            before={"acknowledgedAt": _iso(before["acknowledged_at"]), "resolvedAt": None},
            after={
                "code": row["code"],
                "acknowledgedAt": _iso(row["acknowledged_at"]),
                "resolvedAt": _iso(row["resolved_at"]),
            },
            request_id=request_id,
        )
    log.info(action.replace(".", "_"), alert_id=alert_id, actor=actor)
    return row


def _iso(at: Any) -> str | None:
    return at.isoformat() if at is not None else None


async def acknowledge(
    pool: db.Pool, *, alert_id: str, tenant_id: str, actor: str, request_id: str | None = None
) -> db.Row:
    """An operator has seen the alert (the first acknowledgement stays); audited.
    ``ConflictError`` once it is resolved."""
    return await _operator_change(
        pool,
        "acknowledge_alert",
        "alert.acknowledged",
        alert_id=alert_id,
        tenant_id=tenant_id,
        actor=actor,
        request_id=request_id,
    )


async def resolve(
    pool: db.Pool, *, alert_id: str, tenant_id: str, actor: str, request_id: str | None = None
) -> db.Row:
    """An operator closes the alert; audited. Should its cause recur, a new alert opens.
    ``ConflictError`` if it is resolved already."""
    return await _operator_change(
        pool,
        "resolve_alert",
        "alert.resolved",
        alert_id=alert_id,
        tenant_id=tenant_id,
        actor=actor,
        request_id=request_id,
    )
