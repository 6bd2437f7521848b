"""Review routes (DESIGN.md §5): the queue of uncertain verifications and their decisions.

Scope ``reviews:decide`` for both; another tenant's review is a 404. Fetching the photos the
evidence links point at takes ``assets:read``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from proveniq_core import db
from proveniq_core.api.auth import require
from proveniq_core.api.deps import CoreDep
from proveniq_core.api.evidence import EvidenceView, evidence_view
from proveniq_core.api.models import ERRORS, ErrorEnvelope, Strict
from proveniq_core.api.paging import decode_position, encode_cursor
from proveniq_core.ledger.keys import Principal
from proveniq_core.verify import reviews
from proveniq_core.verify.reviews import Decision, ReviewStatus

router = APIRouter(tags=["reviews"])

Reviewer = Annotated[Principal, Depends(require("reviews:decide"))]


class ReviewView(BaseModel):
    reviewId: str
    assetId: str
    verificationId: str
    status: ReviewStatus = Field(
        description="pending; expired (past dueAt, escalated, still decidable); approved; rejected"
    )
    reasons: list[str] = Field(description="why the analysis could not decide")
    checks: dict[str, Any] = Field(description="each check's verdict and measurements")
    createdAt: datetime
    dueAt: datetime = Field(description="undecided by then, the review expires and escalates")
    expiredAt: datetime | None
    decidedAt: datetime | None
    decidedBy: str | None = Field(description="the reviewer's API key, key:<id>")
    note: str | None
    evidence: list[EvidenceView]


class ReviewPage(BaseModel):
    items: list[ReviewView]
    nextCursor: str | None


class ReviewDecision(Strict):
    decision: Decision = Field(description="approve: asset verified; reject: asset rejected")
    note: Annotated[str, Field(max_length=2000)] | None = None


def review_view(row: dict[str, Any], evidence: list[dict[str, Any]]) -> ReviewView:
    return ReviewView(
        reviewId=str(row["id"]),
        assetId=str(row["asset_id"]),
        verificationId=str(row["verification_id"]),
        status=row["status"],
        reasons=row["reasons"],
        checks=row["checks"],
        createdAt=row["created_at"],
        dueAt=row["due_at"],
        expiredAt=row["expired_at"],
        decidedAt=row["decided_at"],
        decidedBy=row["decided_by"],
        note=row["note"],
        evidence=[
            evidence_view(e) for e in evidence if e["verification_id"] == row["verification_id"]
        ],
    )


async def _evidence(conn: db.Conn, rows: list[db.Row]) -> list[db.Row]:
    ids = [r["verification_id"] for r in rows]
    return await db.fetch_all(conn, "evidence_of_verifications", {"ids": ids}) if ids else []


@router.get("/api/reviews", response_model=ReviewPage, responses=ERRORS)
async def list_reviews(
    core: CoreDep,
    principal: Reviewer,
    status: Annotated[
        ReviewStatus | None, Query(description="default: the undecided (pending and expired)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> ReviewPage:
    """The review queue, oldest first, each with links to its evidence."""
    after = decode_position(cursor) if cursor else None
    params = {
        "tenant_id": principal.tenant_id,
        "status": status,
        "after_at": after[0] if after else None,
        "after_id": after[1] if after else None,
        "limit": limit + 1,
    }
    async with db.connection(core.pool) as conn:
        rows = await db.fetch_all(conn, "list_reviews", params)
        rows, more = rows[:limit], len(rows) > limit
        evidence = await _evidence(conn, rows)
    next_cursor = (
        encode_cursor(rows[-1]["created_at"].isoformat(), str(rows[-1]["id"])) if more else None
    )
    return ReviewPage(items=[review_view(r, evidence) for r in rows], nextCursor=next_cursor)


@router.post(
    "/api/reviews/{review_id}/decision",
    response_model=ReviewView,
    responses={**ERRORS, 409: {"description": "already decided", "model": ErrorEnvelope}},
)
async def decide_review(
    review_id: str, body: ReviewDecision, request: Request, core: CoreDep, principal: Reviewer
) -> ReviewView:
    """Approve (asset ``verified``) or reject (asset ``rejected``); a review is decided once."""
    row = await reviews.decide(
        core.pool,
        tenant_id=principal.tenant_id,
        review_id=review_id,
        decision=body.decision,
        note=body.note,
        actor=f"key:{principal.key_id}",
        request_id=request.state.request_id,
    )
    async with db.connection(core.pool) as conn:
        evidence = await _evidence(conn, [row])
    return review_view(row, evidence)


__all__ = ["ReviewDecision", "ReviewPage", "ReviewView", "router"]
