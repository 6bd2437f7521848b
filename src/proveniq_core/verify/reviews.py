"""Human review of uncertain verifications: opened with the outcome, decided once, expired.

A verification that ends ``manual_review`` opens a review due ``review_timeout`` seconds
later. A reviewer approves (asset ``verified``) or rejects (asset ``rejected``) it once; a
second decision is a conflict. A review still undecided when due becomes ``expired`` and
raises an ops alert (the escalation); it can still be decided, which resolves the alert.
The due time lives in PostgreSQL, so expiry survives restarts: any worker claims due
reviews with ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import structlog

from proveniq_core import db
from proveniq_core.errors import ConflictError, CoreError, NotFoundError
from proveniq_core.ledger import alerts, assets, audit, outbox

log = structlog.get_logger(__name__)

ACTOR = "system:verify"
EXPIRED_ALERT = "E_REVIEW_EXPIRED"

Decision = Literal["approve", "reject"]
ReviewStatus = Literal["pending", "expired", "approved", "rejected"]
_OUTCOMES: dict[Decision, tuple[ReviewStatus, str]] = {
    "approve": ("approved", "verified"),
    "reject": ("rejected", "rejected"),
}


@dataclass(frozen=True, slots=True)
class Review:
    """A review of one verification, with the analysis' checks it is to decide on."""

    id: uuid.UUID
    asset_id: uuid.UUID
    verification_id: uuid.UUID
    tenant_id: str
    status: ReviewStatus
    reasons: list[str]
    """Why the analysis could not decide."""
    checks: dict[str, Any]
    """Each check's verdict and measurements (the verification's)."""
    created_at: datetime
    due_at: datetime
    expired_at: datetime | None
    decided_at: datetime | None
    decided_by: str | None
    note: str | None

    @classmethod
    def from_row(cls, row: db.Row) -> Review:
        """From a row of ``reviews`` with its verification's ``checks``."""
        return cls(
            id=row["id"],
            asset_id=row["asset_id"],
            verification_id=row["verification_id"],
            tenant_id=row["tenant_id"],
            status=row["status"],
            reasons=row["reasons"],
            checks=row["checks"],
            created_at=row["created_at"],
            due_at=row["due_at"],
            expired_at=row["expired_at"],
            decided_at=row["decided_at"],
            decided_by=row["decided_by"],
            note=row["note"],
        )


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


async def decide(
    pool: db.Pool,
    *,
    tenant_id: str,
    review_id: str,
    decision: Decision,
    note: str | None,
    actor: str,
    request_id: str | None = None,
) -> Review:
    """Record a reviewer's decision and move the asset; ``ConflictError`` if already decided."""
    try:
        uuid.UUID(review_id)
    except ValueError:
        raise NotFoundError(f"review {review_id} not found") from None
    status, outcome = _OUTCOMES[decision]
    async with db.transaction(pool) as conn:
        review = await db.fetch_one(
            conn, "get_review_for_update", {"id": review_id, "tenant_id": tenant_id}
        )
        if review is None:
            raise NotFoundError(f"review {review_id} not found")
        if review["status"] not in ("pending", "expired"):
            raise ConflictError(
                f"review {review_id} was already decided: {review['status']}",
                details={"status": review["status"], "decidedAt": review["decided_at"].isoformat()},
            )
        row = await db.fetch_one(
            conn,
            "decide_review",
            {"id": review_id, "status": status, "decided_by": actor, "note": note},
        )
        assert row is not None
        asset_id = str(review["asset_id"])
        await assets.transition(
            conn,
            asset_id,
            outcome,
            actor=actor,
            request_id=request_id,
            reason=f"review {status}" + (f": {note}" if note else ""),
        )
        await audit.record(
            conn,
            actor=actor,
            action=f"review.{status}",
            entity_type="review",
            entity_id=review_id,
            tenant_id=tenant_id,
            before={"status": review["status"]},
            after={"status": status, "note": note, "assetId": asset_id, "assetStatus": outcome},
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
    return Review.from_row(row | {"checks": review["checks"]})


async def page(
    conn: db.Conn,
    tenant_id: str,
    *,
    status: ReviewStatus | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[Review]:
    """The review queue, oldest first (without ``status``: the undecided); ``after`` is the
    (created_at, id) of the last review of the previous page."""
    rows = await db.fetch_all(
        conn,
        "list_reviews",
        {
            "tenant_id": tenant_id,
            "status": status,
            "after_at": after[0] if after else None,
            "after_id": after[1] if after else None,
            "limit": limit,
        },
    )
    return [Review.from_row(row) for row in rows]


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
