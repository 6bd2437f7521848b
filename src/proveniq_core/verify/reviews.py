"""Human review of uncertain verifications: opened with the outcome, decided once, expired.

A verification that ends ``manual_review`` opens a review due ``review_timeout`` seconds
later. A reviewer approves (asset ``verified``) or rejects (asset ``rejected``) it once; a
second decision is a conflict. A review still undecided when due becomes ``expired`` and
raises an ops alert (the escalation); it can still be decided, which resolves the alert.
The due time lives in PostgreSQL, so expiry survives restarts: any worker claims due
reviews with ``FOR UPDATE SKIP LOCKED``.

A reviewer claims a review while working it (``claim``: ``CLAIM_SECONDS``, renewed by
claiming again): meanwhile no other key may claim or decide it. A decision ends the claim;
so does ``release`` or the lease running out.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, Literal

import structlog

from proveniq_core import db
from proveniq_core.errors import ConflictError, CoreError, NotFoundError
from proveniq_core.ledger import alerts, assets, audit, outbox

log = structlog.get_logger(__name__)

ACTOR = "system:verify"
EXPIRED_ALERT = "E_REVIEW_EXPIRED"

CLAIM_SECONDS = 15 * 60

Decision = Literal["approve", "reject"]
ReviewStatus = Literal["pending", "expired", "approved", "rejected"]
_OUTCOMES: dict[Decision, tuple[ReviewStatus, str]] = {
    "approve": ("approved", "verified"),
    "reject": ("rejected", "rejected"),
}


def alert_key(review_id: Any) -> str:
    return f"review:{review_id}:expired"


async def open_review(
    conn: db.Conn,
    *,
    verification_id: Any,
    asset_id: Any,
    tenant_id: str,
    reasons: list[str],
    timeout: float,
) -> db.Row:
    """Open the review of a verification that ended ``manual_review``, in its transaction."""
    row = await db.fetch_one(
        conn,
        "insert_review",
        {
            "id": uuid.uuid4(),
            "verification_id": verification_id,
            "asset_id": asset_id,
            "tenant_id": tenant_id,
            "reasons": db.jsonb(reasons),
            "timeout": timeout,
        },
    )
    assert row is not None  # the caller holds the verification, settling it once
    await audit.record(
        conn,
        actor=ACTOR,
        action="review.opened",
        entity_type="review",
        entity_id=str(row["id"]),
        tenant_id=tenant_id,
        after={
            "assetId": str(asset_id),
            "verificationId": str(verification_id),
            "dueAt": row["due_at"].isoformat(),
        },
    )
    await outbox.emit(
        conn,
        tenant_id,
        "review.required",
        {"reviewId": str(row["id"]), "assetId": str(asset_id), "dueAt": row["due_at"].isoformat()},
    )
    return row


def check_id(review_id: str) -> None:
    """A review id that is not a UUID names no review: 404 (not a database error)."""
    try:
        uuid.UUID(review_id)
    except ValueError:
        raise NotFoundError(f"review {review_id} not found") from None


def _decided(review: db.Row) -> ConflictError:
    return ConflictError(
        f"review {review['id']} was already decided: {review['status']}",
        details={"status": review["status"], "decidedAt": review["decided_at"].isoformat()},
    )


def _held(review: db.Row) -> ConflictError:
    return ConflictError(
        f"review {review['id']} is held by {review['claimed_by']} until "
        f"{review['claimed_until'].isoformat()}",
        details={
            "heldBy": review["claimed_by"],
            "claimedUntil": review["claimed_until"].isoformat(),
        },
    )


async def _explain_refused_claim(conn: db.Conn, tenant_id: str, review_id: str) -> CoreError:
    """Why a claim changed nothing: 404, already decided, or held by another key."""
    review = await db.fetch_one(conn, "get_review", {"id": review_id, "tenant_id": tenant_id})
    if review is None:
        return NotFoundError(f"review {review_id} not found")
    if review["status"] not in ("pending", "expired"):
        return _decided(review)
    return _held(review)


async def claim(
    pool: db.Pool, *, tenant_id: str, review_id: str, key_id: str, actor: str
) -> db.Row:
    """Hold the review for ``CLAIM_SECONDS`` (or renew the caller's hold); ``ConflictError``
    if it is decided or another key holds it."""
    check_id(review_id)
    async with db.transaction(pool) as conn:
        row = await db.fetch_one(
            conn,
            "claim_review",
            {
                "id": review_id,
                "tenant_id": tenant_id,
                "key_id": key_id,
                "claimed_by": actor,
                "lease": CLAIM_SECONDS,
            },
        )
        if row is None:
            raise await _explain_refused_claim(conn, tenant_id, review_id)
    log.info("review_claimed", review_id=review_id, actor=actor)
    return row


async def release(pool: db.Pool, *, tenant_id: str, review_id: str, key_id: str) -> None:
    """Give up the caller's hold. Nothing to give up (not held, expired, decided) is fine;
    a live hold of another key is a ``ConflictError``."""
    check_id(review_id)
    params = {"id": review_id, "tenant_id": tenant_id, "key_id": key_id}
    async with db.transaction(pool) as conn:
        if await db.fetch_one(conn, "release_review", params) is not None:
            return
        review = await db.fetch_one(conn, "get_review", {"id": review_id, "tenant_id": tenant_id})
    if review is None:
        raise NotFoundError(f"review {review_id} not found")
    if review["claim_live"] and review["claimed_key"] != key_id:
        raise _held(review)


async def decide(
    pool: db.Pool,
    *,
    tenant_id: str,
    review_id: str,
    decision: Decision,
    note: str | None,
    actor: str,
    request_id: str | None = None,
    reason: str | None = None,
    key_id: str | None = None,
) -> db.Row:
    """Record a reviewer's decision and move the asset and its verification to the outcome;
    ``ConflictError`` if already decided or held by a key other than ``key_id``."""
    check_id(review_id)
    status, outcome = _OUTCOMES[decision]
    async with db.transaction(pool) as conn:
        review = await db.fetch_one(
            conn, "get_review_for_update", {"id": review_id, "tenant_id": tenant_id}
        )
        if review is None:
            raise NotFoundError(f"review {review_id} not found")
        if review["status"] not in ("pending", "expired"):
            raise _decided(review)
        if review["claim_live"] and review["claimed_key"] != key_id:
            raise _held(review)
        row = await db.fetch_one(
            conn,
            "decide_review",
            {
                "id": review_id,
                "status": status,
                "decided_by": actor,
                "note": note,
                "reason": reason,
            },
        )
        assert row is not None
        asset_id = str(review["asset_id"])
        await db.execute(
            conn,
            "settle_reviewed_verification",
            {"id": review["verification_id"], "status": outcome},
        )
        await assets.transition(
            conn,
            asset_id,
            outcome,
            actor=actor,
            request_id=request_id,
            reason=f"review {status}"
            + (f" ({reason})" if reason else "")
            + (f": {note}" if note else ""),
        )
        await audit.record(
            conn,
            actor=actor,
            action=f"review.{status}",
            entity_type="review",
            entity_id=review_id,
            tenant_id=tenant_id,
            before={"status": review["status"]},
            after={
                "status": status,
                "reason": reason,
                "note": note,
                "assetId": asset_id,
                "assetStatus": outcome,
            },
            request_id=request_id,
        )
        await outbox.emit(
            conn,
            tenant_id,
            "verification.completed",
            {
                "assetId": asset_id,
                "verificationId": str(review["verification_id"]),
                "outcome": outcome,
                "reasons": review["reasons"],
                "reviewId": review_id,
            },
        )
        if review["status"] == "expired":
            await db.execute(conn, "resolve_alerts", {"dedup_keys": [alert_key(review_id)]})
    log.info("review_decided", review_id=review_id, status=status, actor=actor)
    return row | {"checks": review["checks"]}


async def expire_due(pool: db.Pool, *, limit: int = 100) -> int:
    """Expire the reviews past due (one batch) and escalate each; return how many."""
    async with db.transaction(pool) as conn:
        rows = await db.fetch_all(conn, "expire_due_reviews", {"limit": limit})
        for row in rows:
            review_id, asset_id = str(row["id"]), str(row["asset_id"])
            await audit.record(
                conn,
                actor=ACTOR,
                action="review.expired",
                entity_type="review",
                entity_id=review_id,
                tenant_id=row["tenant_id"],
                before={"status": "pending"},
                after={"status": "expired", "dueAt": row["due_at"].isoformat()},
            )
            await alerts.raise_alert(
                conn,
                code=EXPIRED_ALERT,
                severity="critical",
                message=(
                    f"review {review_id} of asset {asset_id} was not decided by "
                    f"{row['due_at'].isoformat()}; a senior reviewer must decide it"
                ),
                dedup_key=alert_key(review_id),
                tenant_id=row["tenant_id"],
                subject={"reviewId": review_id, "assetId": asset_id},
            )
    for row in rows:
        log.warning("review_expired", review_id=str(row["id"]), asset_id=str(row["asset_id"]))
    return len(rows)


async def run_expiry(pool: db.Pool, interval: float) -> None:
    """Expire due reviews every ``interval`` seconds until cancelled; outages are logged."""
    while True:
        try:
            while await expire_due(pool) > 0:
                pass
        except CoreError as exc:
            log.warning("review_expiry_error", error=str(exc), code=exc.code)
        await asyncio.sleep(interval)
