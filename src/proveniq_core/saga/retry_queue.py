"""The retry queue (the seed's DLQ): locker links deferred by a timeout, an unreachable
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
    ConflictError,
    CoreError,
    LockerUnreachableError,
    NotFoundError,
)
from proveniq_core.ledger import alerts, assets
from proveniq_core.resilience.backoff import Backoff
from proveniq_core.saga.engine import SagaEngine
from proveniq_core.saga.model import HOLD, SagaResult, error_doc

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
        await db.execute(conn, "update_retry_entry", params)
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


async def close_entries(conn: db.Conn, asset_id: str, status: str) -> int:
    """Close the asset's open entries as ``resolved`` (linked) or ``discarded``."""
    return await db.execute(conn, "close_retry_entries", {"asset_id": asset_id, "status": status})


class RetryQueue:
    """Operator and worker access to the queue: list, inspect, process, retry, discard."""

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
        """Retry the most overdue pending entry now, in this process (the seed's
        ``dlqProcessor.processNext()``). Returns the entry as it ended, or None when
        nothing is due."""
        async with db.connection(self.pool) as conn:
            due = await db.fetch_all(conn, "due_retry_entries", {"limit": 10})
        for entry in due:
            if await self.engine.run_now(str(entry["saga_id"])) is not None:
                return await self.get(str(entry["id"]))
        return None

    async def retry(self, entry_id: str, tenant_id: str | None = None) -> tuple[db.Row, Any]:
        """An operator's "retry now": run the entry's saga here, due or not, even when the
        entry is exhausted or discarded. Returns the entry after and the saga's result."""
        entry = await self.get(entry_id, tenant_id)
        if entry["status"] == "resolved":
            return entry, None
        async with db.transaction(self.pool) as conn:
            await db.execute(conn, "reopen_retry_entry", {"id": entry_id})
        result: SagaResult | None = await self.engine.run_now(str(entry["saga_id"]))
        return await self.get(entry_id), result

    async def discard(self, entry_id: str, tenant_id: str | None = None) -> db.Row:
        """Stop retrying: the entry ends ``discarded`` and its saga stays held (the asset
        stays ``pending_link`` until an operator retries or cancels it)."""
        entry = await self.get(entry_id, tenant_id)
        async with db.transaction(self.pool) as conn:
            if await db.fetch_one(conn, "hold_saga", {"id": entry["saga_id"]}) is None:
                raise ConflictError(
                    f"retry-queue entry {entry_id} is being retried right now; try again shortly"
                )
            await close_entries(conn, str(entry["asset_id"]), "discarded")
        return await self.get(entry_id)

    async def wake_locker(self, locker_ref: str) -> int:
        """A device came back online: make its pending entries due now."""
        async with db.transaction(self.pool) as conn:
            woken = await db.fetch_all(conn, "wake_locker_retries", {"locker_ref": locker_ref})
            if woken:
                await db.execute(conn, "notify_sagas")
        if woken:
            log.info("retry_queue.locker_online", locker_ref=locker_ref, woken=len(woken))
        return len(woken)
