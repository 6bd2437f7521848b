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
from proveniq_core.verify.reviews import Decision, Review, ReviewStatus

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


def review_view(review: Review, evidence: list[dict[str, Any]]) -> ReviewView:
    return ReviewView(
        reviewId=str(review.id),
        assetId=str(review.asset_id),
        verificationId=str(review.verification_id),
        status=review.status,
        reasons=review.reasons,
        checks=review.checks,
        createdAt=review.created_at,
        dueAt=review.due_at,
        expiredAt=review.expired_at,
        decidedAt=review.decided_at,
        decidedBy=review.decided_by,
        note=review.note,
        evidence=[
            evidence_view(e) for e in evidence if e["verification_id"] == review.verification_id
        ],
    )


async def _evidence(conn: db.Conn, found: list[Review]) -> list[db.Row]:
    ids = [r.verification_id for r in found]
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
    async with db.connection(core.pool) as conn:
        found = await reviews.page(
            conn, principal.tenant_id, status=status, after=after, limit=limit + 1
        )
        found, more = found[:limit], len(found) > limit
        evidence = await _evidence(conn, found)
    next_cursor = (
        encode_cursor(found[-1].created_at.isoformat(), str(found[-1].id)) if more else None
    )
    return ReviewPage(items=[review_view(r, evidence) for r in found], nextCursor=next_cursor)


@router.post(
    "/api/reviews/{review_id}/decision",
    response_model=ReviewView,
    responses={**ERRORS, 409: {"description": "already decided", "model": ErrorEnvelope}},
)
async def decide_review(
    review_id: str, body: ReviewDecision, request: Request, core: CoreDep, principal: Reviewer
) -> ReviewView:
    """Approve (asset ``verified``) or reject (asset ``rejected``); a review is decided once."""
    review = await reviews.decide(
        core.pool,
        tenant_id=principal.tenant_id,
        review_id=review_id,
        decision=body.decision,
        note=body.note,
        actor=f"key:{principal.key_id}",
        request_id=request.state.request_id,
    )
    async with db.connection(core.pool) as conn:
        evidence = await _evidence(conn, [review])
    return review_view(review, evidence)


__all__ = ["ReviewDecision", "ReviewPage", "ReviewView", "router"]
