"""The retry queue (the DLQ): locker links deferred by a timeout, an unreachable
device or maintenance, retried on the saga's durable timer.

An entry is written in the transaction that parks the registration saga (the partial
commit), so the asset is ``pending_link`` exactly when an entry is open. The saga's
``run_at`` is the timer; the entry's ``next_retry_at`` mirrors it for operators. Any worker
retries a due entry by claiming its saga; ``RetryQueue.process_next`` does the same for
one entry, here and now.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from proveniq_core import db
from proveniq_core.errors import (
    CoreError,
    LockerUnreachableError,
    NotFoundError,
)
from proveniq_core.ledger import alerts, assets, audit
from proveniq_core.resilience.backoff import Backoff
from proveniq_core.saga.engine import SagaEngine
from proveniq_core.saga.model import HOLD, error_doc

log = structlog.get_logger(__name__)

STATUSES = ("pending", "retrying", "exhausted", "resolved", "discarded")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff from ``base`` seconds, ``max_attempts`` retries, and how long an
    unreachable device is retried before the entry escalates."""

    base: float = 300.0
    max_attempts: int = 5
    unreachable_limit: float = 3600.0

    def delay(self, retry_count: int) -> float:
        return Backoff(self.base).delay(retry_count)


@dataclass(frozen=True, slots=True)
class Deferred:
    """One deferred link, as the link step sees it."""

    asset_id: str
    tenant_id: str
    locker_ref: str
    saga_id: str
    actor: str
    request_id: str | None = None


async def park_link(
    conn: db.Conn,
    link: Deferred,
    cause: CoreError,
    policy: RetryPolicy,
    *,
    until: datetime | None = None,
) -> float:
    """The partial commit of a deferred link, in the caller's transaction.

    The asset goes ``pending_link``; the entry is created (``retryCount`` 0) or, on a failed
    retry, counted. Returns the seconds until the next try — ``HOLD`` once the entry is
    exhausted, which also raises an ops alert. With ``until`` (maintenance) the try waits
    until then and does not count.
    """
    await assets.transition(
        conn,
        link.asset_id,
        "pending_link",
        actor=link.actor,
        request_id=link.request_id,
        saga_id=link.saga_id,
        reason=cause.code,
    )
    entry = await db.fetch_one(conn, "open_retry_entry_for_update", {"asset_id": link.asset_id})
    now = datetime.now(UTC)
    if until is not None:
        delay = max((until - now).total_seconds(), 0.0)
        count = entry["retry_count"] if entry else 0
    elif entry is None:
        count, delay = 0, policy.delay(0)
    else:
        count = entry["retry_count"] + 1
        age = (now - entry["first_error_at"]).total_seconds()
        unreachable_too_long = (
            isinstance(cause, LockerUnreachableError) and age > policy.unreachable_limit
        )
        delay = (
            HOLD if count >= policy.max_attempts or unreachable_too_long else policy.delay(count)
        )
    params = {
        "asset_id": link.asset_id,
        "retry_count": count,
        "delay": None if delay == HOLD else delay,
        "status": "exhausted" if delay == HOLD else "pending",
        "last_error": db.jsonb(error_doc(cause)),
    }
    if entry is None:
        params |= {
            "id": str(uuid.uuid4()),
            "tenant_id": link.tenant_id,
            "locker_ref": link.locker_ref,
            "saga_id": link.saga_id,
        }
        await db.execute(conn, "insert_retry_entry", params)
    else:
        # The asset was pending_link already (its move audited nothing): audit the entry.
        row = await db.fetch_one(conn, "update_retry_entry", params)
        assert row is not None  # locked above
        action = "retry_entry.exhausted" if delay == HOLD else "retry_entry.deferred"
        await _audit_entry(conn, link, row, action, error_doc(cause))
    if delay == HOLD:
        await alerts.raise_alert(
            conn,
            code="E_RETRY_EXHAUSTED",
            severity="critical",
            message=(
                f"locker link of asset {link.asset_id} to {link.locker_ref} gave up after "
                f"{count} retries ({cause.code}); an operator must retry or cancel it"
            ),
            dedup_key=f"retry:{link.asset_id}:link",
            tenant_id=link.tenant_id,
            subject={"assetId": link.asset_id, "lockerRef": link.locker_ref, "retryCount": count},
        )
    return delay


async def _audit_entry(
    conn: db.Conn, link: Deferred, row: db.Row, action: str, error: dict[str, Any]
) -> None:
    """Audit an entry the saga changed, in its transaction, under the registration's actor."""
    await audit.record(
        conn,
        actor=link.actor,
        action=action,
        entity_type="retry_entry",
        entity_id=str(row["id"]),
        tenant_id=link.tenant_id,
        after={
            "status": row["status"],
            "retryCount": row["retry_count"],
            "nextRetryAt": row["next_retry_at"].isoformat() if row["next_retry_at"] else None,
            "errorCode": error.get("code"),
        },
        request_id=link.request_id,
        saga_id=link.saga_id,
    )


async def close_entries(conn: db.Conn, asset_id: str, status: str) -> int:
    """Close the asset's open entries as ``resolved`` (linked) or ``discarded``."""
    return await db.execute(conn, "close_retry_entries", {"asset_id": asset_id, "status": status})


async def wake_entries(conn: db.Conn, *locker_refs: str) -> int:
    """Make the lockers' pending entries (and their sagas) due now, in the caller's
    transaction, but those of a locker in maintenance; returns how many."""
    woken = await db.fetch_all(conn, "wake_locker_retries", {"locker_refs": list(locker_refs)})
    if woken:
        await db.execute(conn, "notify_sagas")
    return len(woken)


async def exhaust_entries(conn: db.Conn, link: Deferred, error: dict[str, Any]) -> None:
    """Give up retrying the asset's open entries (an operator must decide), each audited, in
    the caller's transaction."""
    params = {"asset_id": link.asset_id, "last_error": db.jsonb(error)}
    for row in await db.fetch_all(conn, "exhaust_retry_entries", params):
        await _audit_entry(conn, link, row, "retry_entry.exhausted", error)


class RetryQueue:
    """Operator and worker access to the queue: list, inspect, process. An operator's retry
    or discard is ``saga.operator``'s: it audits the change in the same transaction."""

    def __init__(self, pool: db.Pool, engine: SagaEngine) -> None:
        self.pool = pool
        self.engine = engine

    async def get(self, entry_id: str, tenant_id: str | None = None) -> db.Row:
        try:
            uuid.UUID(entry_id)
        except ValueError:
            raise NotFoundError(f"retry-queue entry {entry_id} not found") from None
        async with db.connection(self.pool) as conn:
            row = await db.fetch_one(conn, "get_retry_entry", {"id": entry_id})
        if row is None or (tenant_id is not None and row["tenant_id"] != tenant_id):
            raise NotFoundError(f"retry-queue entry {entry_id} not found")
        return row

    async def for_asset(self, asset_id: str) -> db.Row | None:
        async with db.connection(self.pool) as conn:
            return await db.fetch_one(conn, "latest_retry_entry", {"asset_id": asset_id})

    async def process_next(self) -> db.Row | None:
        """Retry the most overdue pending entry now, in this process (the DLQ's
        ``dlqProcessor.processNext()``). Returns the entry as it ended, or None when
        nothing is due."""
        async with db.connection(self.pool) as conn:
            due = await db.fetch_all(conn, "due_retry_entries", {"limit": 10})
        for entry in due:
            if await self.engine.run_now(str(entry["saga_id"])) is not None:
                return await self.get(str(entry["id"]))
        return None

    async def wake_lockers(self, *locker_refs: str) -> int:
        """Devices came back online: make their pending entries due now, in one statement."""
        async with db.transaction(self.pool) as conn:
            woken = await wake_entries(conn, *locker_refs)
        if woken:
            log.info(
                "retry_queue.lockers_online",
                locker_refs=locker_refs[:10],
                lockers=len(locker_refs),
                woken=woken,
            )
        return woken
