"""Operator actions on registrations the failure path holds (docs/architecture.md §3).

Retry or discard a retry-queue entry, retry a link the locker refused (``link_failed``)
with a fresh command, cancel a held registration (its saga compensates), and put a locker
in maintenance. Each one checks, changes and audits under the operator's key in one
transaction, with the rows it decides on locked, so a crash or a concurrent action can
never leave a change without its audit row, nor two operators both pass the check. Actions
that run a saga claim it in that transaction and run it here, waiting for it up to
``wait`` seconds (the link budget): the caller sees where it ended, or that it goes on in
the background (a locker that does not answer, an undo that is slow). One that finds the
saga held by another process raises ``ConflictError`` (try again shortly).
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
from proveniq_core.saga.retry_queue import RetryQueue, close_entries, wake_entries

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


async def _entry_for_update(conn: db.Conn, entry_id: str, tenant_id: str) -> db.Row:
    """The tenant's retry-queue entry, locked until the transaction ends: else 404."""
    try:
        uuid.UUID(entry_id)
    except ValueError:
        raise NotFoundError(f"retry-queue entry {entry_id} not found") from None
    entry = await db.fetch_one(conn, "get_retry_entry_for_update", {"id": entry_id})
    if entry is None or entry["tenant_id"] != tenant_id:
        raise NotFoundError(f"retry-queue entry {entry_id} not found")
    return entry


async def _audit_entry(
    conn: db.Conn,
    action: str,
    before: db.Row,
    after: db.Row,
    *,
    actor: str,
    request_id: str | None,
    reason: str | None = None,
) -> None:
    await audit.record(
        conn,
        actor=actor,
        action=action,
        entity_type="retry_entry",
        entity_id=str(after["id"]),
        tenant_id=after["tenant_id"],
        before={"status": before["status"]},
        after={"status": after["status"], "assetId": str(after["asset_id"])}
        | ({"reason": reason} if reason else {}),
        request_id=request_id,
        saga_id=str(after["saga_id"]),
    )


async def retry_entry(
    queue: RetryQueue,
    entry_id: str,
    tenant_id: str,
    *,
    actor: str,
    request_id: str | None,
    wait: float,
) -> tuple[db.Row, bool]:
    """Retry an entry's link now (even an exhausted or discarded one); returns the entry
    after, and whether its saga stopped within ``wait`` seconds (else the entry is still
    ``retrying`` and the saga goes on in the background). 409 when it is resolved, its asset
    is no longer held, or another process is running its saga (another operator's retry, or
    a worker's).
    """
    task = await _start_retry(queue, entry_id, tenant_id, actor=actor, request_id=request_id)
    settled = await queue.engine.within(task, wait) is not None
    return await queue.get(entry_id, tenant_id), settled


async def _start_retry(
    queue: RetryQueue, entry_id: str, tenant_id: str, *, actor: str, request_id: str | None
) -> asyncio.Task[SagaResult]:
    """One transaction locks the entry, claims its saga, marks the entry ``retrying`` and
    writes the audit row; the saga then runs in this process's background, its steps
    auditing their own moves."""
    engine = queue.engine
    async with db.transaction(queue.pool) as conn:
        before = await _entry_for_update(conn, entry_id, tenant_id)
        if before["status"] == "resolved":
            raise ConflictError(f"retry-queue entry {entry_id} is resolved: the asset is linked")
        saga = await engine.claim_in(conn, str(before["saga_id"]))
        # Checked after the claim: once the saga is ours nothing else moves the asset, and
        # when another process has it, an asset no longer held explains more than "busy".
        await _held_asset(conn, tenant_id, str(before["asset_id"]), "retried")
        if saga is None:
            raise ConflictError(
                f"retry-queue entry {entry_id} is being retried right now by another "
                "operator or a worker; try again shortly"
            )
        after = await db.fetch_one(conn, "retry_entry_now", {"id": entry_id})
        assert after is not None  # locked above, and not resolved
        await _audit_entry(
            conn, "retry_entry.retried", before, after, actor=actor, request_id=request_id
        )
    return engine.start(engine.resume(saga))


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

    One transaction locks the entry, holds its saga (only if no process is running it),
    closes the entry and writes the audit row, with the operator's ``reason`` if given."""
    async with db.transaction(queue.pool) as conn:
        before = await _entry_for_update(conn, entry_id, tenant_id)
        if before["status"] in ("resolved", "discarded"):
            raise ConflictError(f"retry-queue entry {entry_id} is already {before['status']}")
        if await db.fetch_one(conn, "hold_saga", {"id": before["saga_id"]}) is None:
            raise ConflictError(
                f"retry-queue entry {entry_id} is being retried right now; try again shortly"
            )
        await close_entries(conn, str(before["asset_id"]), "discarded")
        after = await db.fetch_one(conn, "get_retry_entry", {"id": entry_id})
        assert after is not None
        await _audit_entry(
            conn,
            "retry_entry.discarded",
            before,
            after,
            actor=actor,
            request_id=request_id,
            reason=reason,
        )
    return after


BULK_LIMIT = 500
BULK_CONCURRENCY = 8


async def retry_exhausted(
    queue: RetryQueue, tenant_id: str, *, actor: str, request_id: str | None, wait: float
) -> tuple[list[db.Row], list[tuple[str, CoreError]]]:
    """Retry every exhausted entry of the tenant now (up to ``BULK_LIMIT``), claiming a few
    at a time, and wait up to ``wait`` seconds for their sagas together.

    Returns the entries as they stand then (``retrying``: still under way in the
    background), and those refused with why (their asset is no longer held, or another
    process is driving its saga)."""
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
    started: dict[str, asyncio.Task[SagaResult]] = {}
    refused: list[tuple[str, CoreError]] = []

    async def one(entry_id: str) -> None:
        async with gate:
            try:
                started[entry_id] = await _start_retry(
                    queue, entry_id, tenant_id, actor=actor, request_id=request_id
                )
            except CoreError as exc:
                refused.append((entry_id, exc))

    await asyncio.gather(*(one(str(e["id"])) for e in exhausted))
    if started:
        await asyncio.wait(started.values(), timeout=wait)
    retried = [await queue.get(entry_id, tenant_id) for entry_id in started]
    return retried, refused


async def retry_link(
    engine: SagaEngine,
    asset_id: str,
    tenant_id: str,
    *,
    actor: str,
    request_id: str | None,
    wait: float,
) -> SagaResult | None:
    """Link a ``link_failed`` asset again, with a new locker command, and drive its saga here;
    returns where it stopped, or None when it goes on past ``wait`` seconds.

    One transaction locks the asset, bumps the saga's ``linkGeneration`` and claims the saga,
    moves the asset to ``pending_link`` (audited) and marks its retry-queue entry
    ``retrying`` — or opens one, as a fault on the first try leaves none. 409 when another
    process holds the saga.
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
        # The new generation first: the claim returns the saga as the run will see it.
        if not await db.fetch_one(conn, "retry_link_saga", {"id": saga_id, "grace": engine.lease}):
            raise _busy(asset_id)
        saga = await engine.claim_in(conn, saga_id)
        if saga is None:
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
            await db.execute(conn, "retry_entry_now", {"id": entry["id"]})
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
                    "delay": None,
                    "last_error": db.jsonb(error) if error else None,
                    "status": "retrying",
                },
            )
        await db.execute(conn, "resolve_alerts", {"dedup_keys": _alert_keys(asset_id)})
    return await engine.within(engine.start(engine.resume(saga)), wait)


async def cancel(
    engine: SagaEngine,
    asset_id: str,
    tenant_id: str,
    *,
    actor: str,
    request_id: str | None,
    wait: float,
) -> SagaResult | None:
    """Give up a held registration: its saga compensates now (the locker link is undone
    unless the device refused it; the asset ends ``compensated``, its entries discarded).
    Returns where the saga stopped, or None when the undo goes on past ``wait`` seconds (a
    locker slow to answer the unlink).

    One transaction locks the asset, claims its saga, discards its retry-queue entries,
    resolves the alerts the decision answers and writes the audit row; the compensation
    then runs here, its steps auditing their own moves. 409 when another process holds the
    saga.
    """
    async with db.transaction(engine.pool) as conn:
        await assets.get(conn, tenant_id, asset_id)
        asset = await db.fetch_one(conn, "get_asset_for_update", {"id": asset_id})
        assert asset is not None
        await _held_asset(conn, tenant_id, asset_id, "cancelled")
        saga_id = str(asset["saga_id"])
        saga = await engine.claim_in(conn, saga_id)
        if saga is None:
            raise _busy(asset_id)
        await close_entries(conn, asset_id, "discarded")
        await db.execute(conn, "resolve_alerts", {"dedup_keys": _alert_keys(asset_id)})
        await audit.record(
            conn,
            actor=actor,
            action="asset.cancel",
            entity_type="asset",
            entity_id=asset_id,
            tenant_id=tenant_id,
            before={"status": asset["status"]},
            after={"sagaStatus": "compensating"},
            request_id=request_id,
            saga_id=saga_id,
        )
    cause = PartialCommitError(f"registration cancelled by {actor}")
    return await engine.within(engine.start(engine.compensate(saga, cause)), wait)


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
    entries due now. One transaction locks the locker, changes it, wakes its entries and
    writes the audit row. Returns the locker and how many entries were woken.
    """
    if until is not None and until <= datetime.now(UTC):
        until = None
    params: dict[str, Any] = {"tenant_id": tenant_id, "locker_ref": locker_ref}
    async with db.transaction(queue.pool) as conn:
        before = await db.fetch_one(conn, "get_locker_for_update", params)
        if before is None:
            raise NotFoundError(f"locker {locker_ref} not found")
        row = await db.fetch_one(conn, "set_locker_maintenance", params | {"until": until})
        assert row is not None  # locked above
        woken = await wake_entries(conn, locker_ref) if until is None else 0
        await audit.record(
            conn,
            actor=actor,
            action="locker.maintenance",
            entity_type="locker",
            entity_id=locker_ref,
            tenant_id=tenant_id,
            before={"maintenanceUntil": _iso(before["maintenance_until"])},
            after={"maintenanceUntil": _iso(until), "wokenEntries": woken},
            request_id=request_id,
        )
    return row, woken
