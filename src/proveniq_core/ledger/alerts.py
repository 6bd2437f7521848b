"""Ops alerts: stored in the ledger, one open alert per cause, counted while it repeats."""

from __future__ import annotations

import uuid
from typing import Any, Literal

import structlog

from proveniq_core import db
from proveniq_core.ledger import outbox

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
