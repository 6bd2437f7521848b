"""Operator actions on registrations the failure path holds (DESIGN.md §3, §8).

Retry or discard a retry-queue entry, retry a link the locker refused (``link_failed``)
with a fresh command, cancel a held registration (its saga compensates), and put a locker
in maintenance. Each one is audited under the operator's key. Actions that run a saga run it
here and now, so the caller sees where it ended; one that finds the saga held by another
process raises ``ConflictError`` (try again shortly).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from proveniq_core import db
from proveniq_core.errors import ConflictError, CoreError, NotFoundError, PartialCommitError
from proveniq_core.ledger import assets, audit
from proveniq_core.saga.engine import SagaEngine
from proveniq_core.saga.model import SagaResult
from proveniq_core.saga.retry_queue import RetryQueue

HELD = ("pending_link", "link_failed")
MAX_MAINTENANCE = timedelta(days=30)


def _busy(asset_id: str) -> ConflictError:
    return ConflictError(
        f"asset {asset_id}: another process is working on its registration right now; "
        "try again shortly"
    )


def _alert_keys(asset_id: str) -> list[str]:
    """The open alerts an operator's decision about the asset answers."""
    return [f"asset:{asset_id}:link_failed", f"retry:{asset_id}:link"]


async def _held_asset(conn: db.Conn, tenant_id: str, asset_id: str, action: str) -> db.Row:
    """The tenant's asset, if a registration held by the failure path: else 404 or 409."""
    asset = await assets.get(conn, tenant_id, asset_id)
    if asset["status"] not in HELD or asset["saga_id"] is None:
        raise ConflictError(
            f"asset {asset_id} is {asset['status']}: only a pending_link or link_failed "
            f"asset can be {action}"
        )
    return asset


async def _audit(
    pool: db.Pool,
    action: str,
    entry: db.Row,
    *,
    actor: str,
    request_id: str | None,
    reason: str | None = None,
) -> None:
    async with db.transaction(pool) as conn:
        await audit.record(
            conn,
            actor=actor,
            action=action,
            entity_type="retry_entry",
            entity_id=str(entry["id"]),
            tenant_id=entry["tenant_id"],
            after={"status": entry["status"], "assetId": str(entry["asset_id"])}
            | ({"reason": reason} if reason else {}),
            request_id=request_id,
            saga_id=str(entry["saga_id"]),
        )


async def retry_entry(
    queue: RetryQueue, entry_id: str, tenant_id: str, *, actor: str, request_id: str | None
) -> db.Row:
    """Retry an entry's link now (even an exhausted or discarded one); returns the entry
    after. 409 when it is resolved or its asset is no longer held."""
    entry = await queue.get(entry_id, tenant_id)
    if entry["status"] == "resolved":
        raise ConflictError(f"retry-queue entry {entry_id} is resolved: the asset is linked")
    async with db.connection(queue.pool) as conn:
        await _held_asset(conn, tenant_id, str(entry["asset_id"]), "retried")
    entry, _ = await queue.retry(entry_id, tenant_id)
    await _audit(queue.pool, "retry_entry.retried", entry, actor=actor, request_id=request_id)
    return entry


async def discard_entry(
    queue: RetryQueue,
    entry_id: str,
    tenant_id: str,
    *,
    actor: str,
    request_id: str | None,
    reason: str | None = None,
) -> db.Row:
    """Stop retrying an entry; its asset stays held until an operator retries or cancels it.
    The operator's ``reason`` is audited with the discard."""
    entry = await queue.get(entry_id, tenant_id)
    if entry["status"] in ("resolved", "discarded"):
        raise ConflictError(f"retry-queue entry {entry_id} is already {entry['status']}")
    entry = await queue.discard(entry_id, tenant_id)
    await _audit(
        queue.pool,
        "retry_entry.discarded",
        entry,
        actor=actor,
        request_id=request_id,
        reason=reason,
    )
    return entry


BULK_LIMIT = 500
BULK_CONCURRENCY = 8


async def retry_exhausted(
    queue: RetryQueue, tenant_id: str, *, actor: str, request_id: str | None
) -> tuple[list[db.Row], list[tuple[str, CoreError]]]:
    """Retry every exhausted entry of the tenant now (up to ``BULK_LIMIT``), a few at a time.

    Returns the entries after their retry, and those refused with why (their asset is no
    longer held, or another process is driving its saga)."""
    async with db.connection(queue.pool) as conn:
        exhausted = await db.fetch_all(
            conn,
            "list_retry_entries",
            {
                "tenant_id": tenant_id,
                "asset_id": None,
                "status": "exhausted",
                "before_at": None,
                "before_id": None,
                "limit": BULK_LIMIT,
            },
        )
    gate = asyncio.Semaphore(BULK_CONCURRENCY)
    retried: list[db.Row] = []
    refused: list[tuple[str, CoreError]] = []

    async def one(entry_id: str) -> None:
        async with gate:
            try:
                retried.append(
                    await retry_entry(
                        queue, entry_id, tenant_id, actor=actor, request_id=request_id
                    )
                )
            except CoreError as exc:
                refused.append((entry_id, exc))

    await asyncio.gather(*(one(str(e["id"])) for e in exhausted))
    return retried, refused


async def retry_link(
    engine: SagaEngine, asset_id: str, tenant_id: str, *, actor: str, request_id: str | None
) -> SagaResult | None:
    """Link a ``link_failed`` asset again, with a new locker command, and drive its saga here.

    One transaction bumps the saga's ``linkGeneration``, moves the asset to ``pending_link``
    and reopens its retry-queue entry — or opens one, as a fault on the first try leaves
    none. Returns None when another process took the saga before this one could.
    """
    async with db.transaction(engine.pool) as conn:
        await assets.get(conn, tenant_id, asset_id)
        asset = await db.fetch_one(conn, "get_asset_for_update", {"id": asset_id})
        assert asset is not None
        if asset["status"] != "link_failed" or asset["saga_id"] is None:
            hint = "; it retries from the retry queue" if asset["status"] == "pending_link" else ""
            raise ConflictError(
                f"asset {asset_id} is {asset['status']}: retry-link applies only to "
                f"link_failed assets{hint}"
            )
        saga_id = str(asset["saga_id"])
        if not await db.fetch_one(conn, "retry_link_saga", {"id": saga_id, "grace": engine.lease}):
            raise _busy(asset_id)
        await assets.transition(
            conn,
            asset_id,
            "pending_link",
            actor=actor,
            request_id=request_id,
            saga_id=saga_id,
            reason="operator_retry",
        )
        entry = await db.fetch_one(conn, "open_retry_entry_for_update", {"asset_id": asset_id})
        if entry is not None:
            await db.execute(conn, "reopen_retry_entry", {"id": entry["id"]})
        else:
            steps = await db.fetch_all(conn, "get_saga_steps", {"saga_id": saga_id})
            error = next((s["error"] for s in reversed(steps) if s["error"]), None)
            await db.execute(
                conn,
                "insert_retry_entry",
                {
                    "id": str(uuid.uuid4()),
                    "asset_id": asset_id,
                    "tenant_id": tenant_id,
                    "locker_ref": asset["locker_ref"],
                    "saga_id": saga_id,
                    "retry_count": 0,
                    "delay": 0,
                    "last_error": db.jsonb(error) if error else None,
                    "status": "pending",
                },
            )
        await db.execute(conn, "resolve_alerts", {"dedup_keys": _alert_keys(asset_id)})
    return await engine.run_now(saga_id)


async def cancel(
    engine: SagaEngine, asset_id: str, tenant_id: str, *, actor: str, request_id: str | None
) -> SagaResult:
    """Give up a held registration: its saga compensates now (the locker link is undone
    unless the device refused it; the asset ends ``compensated``, its entries discarded)."""
    async with db.connection(engine.pool) as conn:
        asset = await _held_asset(conn, tenant_id, asset_id, "cancelled")
    saga_id = str(asset["saga_id"])
    result = await engine.cancel(saga_id, PartialCommitError(f"registration cancelled by {actor}"))
    if result is None:
        raise _busy(asset_id)
    async with db.transaction(engine.pool) as conn:
        await audit.record(
            conn,
            actor=actor,
            action="asset.cancel",
            entity_type="asset",
            entity_id=asset_id,
            tenant_id=tenant_id,
            before={"status": asset["status"]},
            after={"sagaStatus": result.status},
            request_id=request_id,
            saga_id=saga_id,
        )
        if result.status == "compensated":
            await db.execute(conn, "resolve_alerts", {"dedup_keys": _alert_keys(asset_id)})
    return result


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at else None


async def set_maintenance(
    queue: RetryQueue,
    tenant_id: str,
    locker_ref: str,
    until: datetime | None,
    *,
    actor: str,
    request_id: str | None,
) -> tuple[db.Row, int]:
    """Put a locker in maintenance until ``until``, or end it (None or a time past).

    Links to it are deferred meanwhile, uncounted; ending maintenance makes its pending
    entries due now. Returns the locker and how many entries were woken.
    """
    if until is not None and until <= datetime.now(UTC):
        until = None
    params: dict[str, Any] = {"tenant_id": tenant_id, "locker_ref": locker_ref}
    async with db.transaction(queue.pool) as conn:
        before = await db.fetch_one(conn, "get_locker", params)
        row = await db.fetch_one(conn, "set_locker_maintenance", params | {"until": until})
        if before is None or row is None:
            raise NotFoundError(f"locker {locker_ref} not found")
        await audit.record(
            conn,
            actor=actor,
            action="locker.maintenance",
            entity_type="locker",
            entity_id=locker_ref,
            tenant_id=tenant_id,
            before={"maintenanceUntil": _iso(before["maintenance_until"])},
            after={"maintenanceUntil": _iso(until)},
            request_id=request_id,
        )
    woken = await queue.wake_locker(locker_ref) if until is None else 0
    return row, woken
