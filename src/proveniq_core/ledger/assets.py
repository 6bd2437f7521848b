"""Asset records and transitions; each change writes its audit row in the same transaction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from proveniq_core import db
from proveniq_core.errors import ConflictError, LedgerConstraintError, NotFoundError
from proveniq_core.ledger import audit, outbox


@dataclass(frozen=True, slots=True)
class Locker:
    """A tenant's registered locker: where it stands, and how far from there evidence may be."""

    id: uuid.UUID
    tenant_id: str
    locker_ref: str
    site_lat: float
    site_lon: float
    geofence_m: float
    maintenance_until: datetime | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: db.Row) -> Locker:
        return cls(
            id=row["id"],
            tenant_id=row["tenant_id"],
            locker_ref=row["locker_ref"],
            site_lat=row["site_lat"],
            site_lon=row["site_lon"],
            geofence_m=row["geofence_m"],
            maintenance_until=row["maintenance_until"],
            created_at=row["created_at"],
        )


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
    """Insert the asset ``pending`` with its audit row and ``asset.created`` event; a repeat
    with the same id returns the existing row and writes nothing."""
    row = await db.fetch_one(
        conn,
        "create_asset",
        {
            "id": asset_id,
            "tenant_id": tenant_id,
            "name": name,
            "category": category,
            "locker_ref": locker_ref,
            "saga_id": saga_id,
            "actor": actor,
            "request_id": request_id,
        },
    )
    assert row is not None
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
    """Move the asset to ``to`` (no-op if already there), with its audit row and, for the
    statuses that have one, its webhook event; the database refuses illegal moves."""
    after = await db.fetch_one(
        conn,
        "transition_asset",
        {
            "id": asset_id,
            "status": to,
            "locker_id": locker_id,
            "actor": actor,
            "request_id": request_id,
            "saga_id": saga_id,
            "reason": reason,
            "event": outbox.ASSET_STATUS_EVENTS.get(to),
        },
    )
    if after is None or after["id"] is None:
        raise NotFoundError(f"asset {asset_id} not found")
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
) -> Locker:
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
    return Locker.from_row(row)


async def get_locker(conn: db.Conn, tenant_id: str, locker_ref: str) -> Locker:
    row = await db.fetch_one(conn, "get_locker", {"tenant_id": tenant_id, "locker_ref": locker_ref})
    if row is None:
        raise LedgerConstraintError(
            f"locker {locker_ref!r} is not registered for this tenant",
            details={"field": "lockerRef"},
        )
    return Locker.from_row(row)


async def locker_page(conn: db.Conn, tenant_id: str, *, after: str, limit: int) -> list[Locker]:
    """The tenant's lockers in ``locker_ref`` order after ``after`` (empty: from the first)."""
    rows = await db.fetch_all(
        conn, "list_lockers", {"tenant_id": tenant_id, "after": after, "limit": limit}
    )
    return [Locker.from_row(row) for row in rows]
