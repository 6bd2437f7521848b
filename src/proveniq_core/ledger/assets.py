"""Asset records and transitions; each change writes its audit row in the same transaction."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from proveniq_core import db
from proveniq_core.errors import ConflictError, LedgerConstraintError, NotFoundError
from proveniq_core.ledger import audit
from proveniq_core.webhooks import outbox


def snapshot(row: db.Row) -> dict[str, Any]:
    """The audited view of an asset row."""
    return {
        "status": row["status"],
        "version": row["version"],
        "lockerRef": row["locker_ref"],
        "lockerId": row["locker_id"],
    }


def event_data(
    row: db.Row, previous: str | None = None, reason: str | None = None
) -> dict[str, Any]:
    """What an ``asset.*`` webhook event says about the asset."""
    return {
        "assetId": str(row["id"]),
        "name": row["name"],
        "category": row["category"],
        "lockerRef": row["locker_ref"],
        "lockerId": row["locker_id"],
        "status": row["status"],
        "previousStatus": previous,
        "version": row["version"],
        "sagaId": str(row["saga_id"]) if row["saga_id"] else None,
        "reason": reason,
    }


async def create(
    conn: db.Conn,
    *,
    asset_id: str,
    tenant_id: str,
    name: str,
    category: str,
    locker_ref: str,
    saga_id: str | None,
    actor: str,
    request_id: str | None = None,
) -> db.Row:
    """Insert the asset ``pending``; a repeat with the same id returns the existing row."""
    row = await db.fetch_one(
        conn,
        "insert_asset",
        {
            "id": asset_id,
            "tenant_id": tenant_id,
            "name": name,
            "category": category,
            "locker_ref": locker_ref,
            "saga_id": saga_id,
        },
    )
    if row is None:
        existing = await db.fetch_one(conn, "get_asset_for_update", {"id": asset_id})
        assert existing is not None
        return existing
    await audit.record(
        conn,
        actor=actor,
        action="asset.created",
        entity_type="asset",
        entity_id=asset_id,
        tenant_id=tenant_id,
        after={**snapshot(row), "name": name, "category": category},
        request_id=request_id,
        saga_id=saga_id,
    )
    await outbox.emit(conn, tenant_id, "asset.created", event_data(row))
    return row


async def transition(
    conn: db.Conn,
    asset_id: str,
    to: str,
    *,
    actor: str,
    locker_id: str | None = None,
    request_id: str | None = None,
    saga_id: str | None = None,
    reason: str | None = None,
) -> db.Row:
    """Move the asset to ``to`` (no-op if already there); the database refuses illegal moves."""
    before = await db.fetch_one(conn, "get_asset_for_update", {"id": asset_id})
    if before is None:
        raise NotFoundError(f"asset {asset_id} not found")
    if before["status"] == to and (locker_id is None or locker_id == before["locker_id"]):
        return before
    after = await db.fetch_one(
        conn, "set_asset_status", {"id": asset_id, "status": to, "locker_id": locker_id}
    )
    assert after is not None
    await audit.record(
        conn,
        actor=actor,
        action=f"asset.{to}",
        entity_type="asset",
        entity_id=asset_id,
        tenant_id=before["tenant_id"],
        before=snapshot(before),
        after={**snapshot(after), **({"reason": reason} if reason else {})},
        request_id=request_id,
        saga_id=saga_id,
    )
    event = outbox.ASSET_STATUS_EVENTS.get(to)
    if event is not None and before["status"] != to:
        data = event_data(after, before["status"], reason)
        await outbox.emit(conn, before["tenant_id"], event, data)
    return after


async def get(conn: db.Conn, tenant_id: str, asset_id: str) -> db.Row:
    try:
        uuid.UUID(asset_id)
    except ValueError:
        raise NotFoundError(f"asset {asset_id} not found") from None
    row = await db.fetch_one(conn, "get_asset", {"id": asset_id, "tenant_id": tenant_id})
    if row is None:
        raise NotFoundError(f"asset {asset_id} not found")
    return row


async def page(
    conn: db.Conn,
    tenant_id: str,
    *,
    status: str | None,
    limit: int,
    before: tuple[datetime, str] | None,
) -> list[db.Row]:
    """Newest first; ``before`` is the (created_at, id) of the last row of the previous page."""
    return await db.fetch_all(
        conn,
        "list_assets",
        {
            "tenant_id": tenant_id,
            "status": status,
            "limit": limit,
            "before_at": before[0] if before else None,
            "before_id": before[1] if before else None,
        },
    )


async def register_locker(
    conn: db.Conn,
    *,
    tenant_id: str,
    locker_ref: str,
    lat: float,
    lon: float,
    geofence_m: float,
    actor: str,
    request_id: str | None = None,
) -> db.Row:
    row = await db.fetch_one(
        conn,
        "insert_locker",
        {
            "id": uuid.uuid4(),
            "tenant_id": tenant_id,
            "locker_ref": locker_ref,
            "site_lat": lat,
            "site_lon": lon,
            "geofence_m": geofence_m,
        },
    )
    if row is None:
        raise ConflictError(f"locker {locker_ref} is already registered")
    await audit.record(
        conn,
        actor=actor,
        action="locker.registered",
        entity_type="locker",
        entity_id=locker_ref,
        tenant_id=tenant_id,
        after={"site": {"lat": lat, "lon": lon}, "geofenceM": geofence_m},
        request_id=request_id,
    )
    return row


async def get_locker(conn: db.Conn, tenant_id: str, locker_ref: str) -> db.Row:
    row = await db.fetch_one(conn, "get_locker", {"tenant_id": tenant_id, "locker_ref": locker_ref})
    if row is None:
        raise LedgerConstraintError(
            f"locker {locker_ref!r} is not registered for this tenant",
            details={"field": "lockerRef"},
        )
    return row
