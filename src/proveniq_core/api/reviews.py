"""Review routes (docs/architecture.md §5): uncertain verifications and their decisions.

Scope ``reviews:decide`` for every route, the review's photos included; another tenant's
review is a 404. A reviewer claims a review while working it (15 minutes, renewed by
claiming again); a review another key holds cannot be claimed or decided (409).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, Field, model_validator

from proveniq_core import db
from proveniq_core.api.auth import require
from proveniq_core.api.deps import CoreDep
from proveniq_core.api.evidence import EvidenceLinks, EvidenceView, Sha256, evidence_view
from proveniq_core.api.models import ERRORS, ErrorEnvelope, Strict
from proveniq_core.api.paging import decode_position as _decode_position
from proveniq_core.api.paging import encode_cursor as _encode_cursor
from proveniq_core.errors import CoreError, NotFoundError, ValidationFailedError
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
    decidedBy: str | None = Field(
        description="the reviewer: the key's name (keys create --name), else key:<id>"
    )
    reason: str | None = Field(description="the decision's reason code")
    note: str | None
    claimedBy: str | None = Field(description="who holds the review now; null: nobody")
    claimedUntil: datetime | None = Field(description="the hold ends then unless renewed")
    evidence: list[EvidenceView] = Field(
        description="the photos; links.content serves each with scope reviews:decide"
    )


class ReviewPage(BaseModel):
    items: list[ReviewView]
    nextCursor: str | None


class ReviewDecision(Strict):
    decision: Decision = Field(
        description="approve: asset and verification verified; reject: both rejected"
    )
    reason: Annotated[str, Field(max_length=64)] | None = Field(
        None, description="a reason code of the outcome (GET /api/reviews/reasons)"
    )
    note: Annotated[str, Field(max_length=2000)] | None = Field(
        None, description="free text; required to reject"
    )

    @model_validator(mode="after")
    def _reject_says_why(self) -> ReviewDecision:
        if self.decision == "reject" and not (self.note and self.note.strip()):
            raise ValueError("a rejection needs a note saying why")
        return self


class ReasonCodes(BaseModel):
    """The reason codes a decision may give, per outcome (configurable)."""

    approve: list[str]
    reject: list[str]


class ReviewClaim(BaseModel):
    reviewId: str
    claimedBy: str = Field(description="the holder: the key's name, else key:<id>")
    claimedUntil: datetime = Field(description="renew by claiming again before then")


def _evidence_link(review_id: str, view: EvidenceView) -> EvidenceView:
    link = EvidenceLinks(content=f"/api/reviews/{review_id}/evidence/{view.sha256}")
    return view.model_copy(update={"links": link})


def review_view(row: dict[str, Any], evidence: list[dict[str, Any]]) -> ReviewView:
    review_id = str(row["id"])
    held = bool(row.get("claim_live"))
    return ReviewView(
        reviewId=review_id,
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
        reason=row["reason"],
        note=row["note"],
        claimedBy=row["claimed_by"] if held else None,
        claimedUntil=row["claimed_until"] if held else None,
        evidence=[
            _evidence_link(review_id, evidence_view(e))
            for e in evidence
            if e["verification_id"] == row["verification_id"]
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
    after = _decode_position(cursor) if cursor else None
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
        _encode_cursor(rows[-1]["created_at"].isoformat(), str(rows[-1]["id"])) if more else None
    )
    return ReviewPage(items=[review_view(r, evidence) for r in rows], nextCursor=next_cursor)


ReviewId = Annotated[str, Path(description="the review's reviewId")]
_HELD: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    409: {"description": "decided already, or held by another key", "model": ErrorEnvelope},
}


@router.get("/api/reviews/reasons", response_model=ReasonCodes, responses=ERRORS)
async def reason_codes(core: CoreDep, principal: Reviewer) -> ReasonCodes:
    """The reason codes a decision may give, per outcome."""
    settings = core.settings
    return ReasonCodes(
        approve=settings.review_reasons_approve, reject=settings.review_reasons_reject
    )


@router.get("/api/reviews/{review_id}", response_model=ReviewView, responses=ERRORS)
async def get_review(core: CoreDep, review_id: ReviewId, principal: Reviewer) -> ReviewView:
    """One review, with who holds it and links to its photos."""
    reviews.check_id(review_id)
    async with db.connection(core.pool) as conn:
        row = await db.fetch_one(
            conn, "get_review", {"id": review_id, "tenant_id": principal.tenant_id}
        )
        if row is None:
            raise NotFoundError(f"review {review_id} not found")
        evidence = await _evidence(conn, [row])
    return review_view(row, evidence)


@router.post("/api/reviews/{review_id}/claim", response_model=ReviewClaim, responses=_HELD)
async def claim_review(core: CoreDep, review_id: ReviewId, principal: Reviewer) -> ReviewClaim:
    """Hold the review for 15 minutes so no one else works it; claim again to renew.

    409 when it is decided or another key holds it (``details.heldBy``, ``claimedUntil``)."""
    row = await reviews.claim(
        core.pool,
        tenant_id=principal.tenant_id,
        review_id=review_id,
        key_id=principal.key_id,
        actor=principal.actor,
    )
    return ReviewClaim(
        reviewId=review_id, claimedBy=row["claimed_by"], claimedUntil=row["claimed_until"]
    )


@router.delete("/api/reviews/{review_id}/claim", status_code=204, responses=_HELD)
async def release_review(core: CoreDep, review_id: ReviewId, principal: Reviewer) -> Response:
    """Give the review back to the queue; 409 if another key holds it."""
    await reviews.release(
        core.pool,
        tenant_id=principal.tenant_id,
        review_id=review_id,
        key_id=principal.key_id,
    )
    return Response(status_code=204)


@router.get(
    "/api/reviews/{review_id}/evidence/{sha256}",
    response_class=Response,
    responses={
        **ERRORS,
        200: {
            "description": "the photo, with the content type detected when it was stored",
            "content": {"image/*": {}, "application/octet-stream": {}},
        },
    },
)
async def review_photo(
    core: CoreDep, review_id: ReviewId, sha256: Sha256, principal: Reviewer
) -> Response:
    """A photo of the review's evidence, or of the asset its photo resembles (to compare)."""
    reviews.check_id(review_id)
    async with db.connection(core.pool) as conn:
        row = await db.fetch_one(
            conn,
            "get_review_photo",
            {"id": review_id, "tenant_id": principal.tenant_id, "sha256": sha256},
        )
    if row is None:
        raise NotFoundError(f"review {review_id} has no photo {sha256}")
    try:
        data = await asyncio.to_thread(core.evidence.get, sha256)
    except FileNotFoundError:
        raise CoreError(f"evidence blob {sha256} is missing from the store") from None
    return Response(
        content=data,
        media_type=row["content_type"],
        headers={
            "ETag": f'"{sha256}"',
            "Cache-Control": "private, max-age=31536000, immutable",
            "X-Content-Type-Options": "nosniff",
        },
    )


def check_reason(settings: Any, body: ReviewDecision) -> None:
    """422 unless the reason code is one the decision's outcome allows."""
    allowed = getattr(settings, f"review_reasons_{body.decision}")
    if body.reason is not None and body.reason not in allowed:
        raise ValidationFailedError(
            f"Invalid request: reason: {body.reason!r} is not a reason code to "
            f"{body.decision}; one of {', '.join(allowed)}",
            details=[{"field": "reason", "problem": "unknown reason code", "type": "enum"}],
        )


@router.post(
    "/api/reviews/{review_id}/decision",
    response_model=ReviewView,
    responses=_HELD,
)
async def decide_review(
    review_id: str, body: ReviewDecision, request: Request, core: CoreDep, principal: Reviewer
) -> ReviewView:
    """Approve (asset and verification ``verified``) or reject (both ``rejected``); a review
    is decided once, and not while another key holds it. Recorded with the key's name."""
    check_reason(core.settings, body)
    pool = core.pool
    row = await reviews.decide(
        pool,
        tenant_id=principal.tenant_id,
        review_id=review_id,
        decision=body.decision,
        note=body.note,
        reason=body.reason,
        actor=principal.actor,
        key_id=principal.key_id,
        request_id=request.state.request_id,
    )
    async with db.connection(pool) as conn:
        evidence = await _evidence(conn, [row])
    return review_view(row, evidence)


__all__ = [
    "ReasonCodes",
    "ReviewClaim",
    "ReviewDecision",
    "ReviewPage",
    "ReviewView",
    "check_reason",
    "review_view",
    "router",
]
