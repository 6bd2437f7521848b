"""The review queue and the review item: claim, see every check, decide, next.

Opening an item claims it through the same function ``POST /api/reviews/{id}/claim`` calls
(15 minutes, renewed by the page while it is open, released when the reviewer leaves); a
decision goes through the API's checks and ``verify.reviews.decide`` under the key's name.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from proveniq_core import db
from proveniq_core.api.evidence import Sha256
from proveniq_core.api.reviews import ReviewDecision, check_reason
from proveniq_core.console import geo
from proveniq_core.console.web import (
    Viewer,
    checked_form,
    core,
    need_action,
    need_page,
    redirect,
    render,
)
from proveniq_core.errors import ConflictError, CoreError, NotFoundError
from proveniq_core.ledger import assets
from proveniq_core.verify import reviews
from proveniq_core.verify.analysis import hamming

router = APIRouter(include_in_schema=False)

SCOPE = "reviews:decide"
ReviewId = Annotated[str, Path(max_length=64)]

# The reason a flagged check most often leads to, preselected (when configured).
DEFAULT_REASONS = {
    "approve": {
        "gps_in_geofence": "accuracy_acceptable",
        "photo_not_duplicate": "resemblance_explained",
    },
    "reject": {"gps_in_geofence": "outside_site", "photo_not_duplicate": "duplicate"},
}


@dataclass(frozen=True, slots=True)
class CheckRow:
    """One check as a reviewer reads it: what, its verdict, measured value, threshold."""

    name: str
    label: str
    verdict: str
    value: str
    threshold: str


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        value = f"{value:,.1f}".rstrip("0").rstrip(".")
    return f"{value}{unit}"


def check_rows(checks: dict[str, Any]) -> list[CheckRow]:
    """Every check of the analysis with its measurement and threshold, in a fixed order."""
    rows = []
    for name, label in (
        ("photo_present", "photo present"),
        ("photo_hash_matches", "hash matches the device's claim"),
        ("photo_decodable", "decodes as an image"),
        ("photo_not_blank", "not blank"),
        ("photo_not_duplicate", "not a near-duplicate"),
        ("gps_in_geofence", "GPS fix inside the geofence"),
        ("timestamp_fresh", "taken just before collection"),
    ):
        c = checks.get(name)
        if c is None:
            continue
        value, threshold = "", ""
        if name == "photo_present":
            value, threshold = f"{c.get('count', 0)} photo(s)", "≥ 1"
        elif name == "photo_hash_matches":
            value = f"{len(c.get('mismatched', []))} mismatched"
            threshold = "0 mismatched"
        elif name == "photo_decodable":
            value = f"{len(c.get('undecodable', []))} undecodable"
            threshold = "0 undecodable"
        elif name == "photo_not_blank":
            spread = ", ".join(_fmt(s) for s in c.get("stddev", []))
            value, threshold = f"grey spread {spread}", f"≥ {_fmt(c.get('minStddev'))}"
        elif name == "photo_not_duplicate":
            d = c.get("distance")
            value = "no other photo" if d is None else f"distance {d} of 64 bits"
            threshold = (
                f"> {c.get('similarDistance')} (≤ {c.get('similarDistance')} review, "
                f"≤ {c.get('duplicateDistance')} duplicate)"
            )
        elif name == "gps_in_geofence":
            value = f"{_fmt(c.get('distanceM'), ' m')} ± {_fmt(c.get('accuracyM'), ' m')}"
            threshold = f"distance + accuracy ≤ {_fmt(c.get('geofenceM'), ' m')}"
        elif name == "timestamp_fresh":
            value = f"skew {_fmt(c.get('skewS'), ' s')}"
            threshold = f"≤ {_fmt(c.get('allowedS'), ' s')}"
        rows.append(CheckRow(name, label, c.get("verdict", "pass"), value, threshold))
    return rows


async def _queue(request: Request, tenant_id: str) -> list[db.Row]:
    async with db.connection(core(request).pool) as conn:
        return await db.fetch_all(
            conn, "console_review_queue", {"tenant_id": tenant_id, "limit": 200}
        )


@router.get("/console/reviews")
async def queue(request: Request, session: Viewer) -> Response:
    """The undecided reviews, by deadline, with who holds each."""
    need_page(session, SCOPE)
    rows = await _queue(request, session.principal.tenant_id)
    key = session.principal.key_id
    free = next((r["id"] for r in rows if not r["claim_live"] or r["claimed_key"] == key), None)
    return await render(
        request,
        session,
        "reviews.html",
        {"rows": rows, "key_id": key, "first_free": free},
        section="reviews",
    )


@router.get("/console/reviews/next")
async def next_review(request: Request, session: Viewer) -> Response:
    """The first review by deadline that nobody else holds."""
    need_page(session, SCOPE)
    key = session.principal.key_id
    for row in await _queue(request, session.principal.tenant_id):
        if not row["claim_live"] or row["claimed_key"] == key:
            return redirect(request, f"/console/reviews/{row['id']}")
    return redirect(request, "/console/reviews", ("info", "Nothing left to review."))


async def _neighbours(request: Request, session: Viewer, review_id: str) -> db.Row:
    async with db.connection(core(request).pool) as conn:
        row = await db.fetch_one(
            conn,
            "console_review_neighbours",
            {
                "id": review_id,
                "tenant_id": session.principal.tenant_id,
                "key_id": session.principal.key_id,
            },
        )
    assert row is not None  # an aggregate: always one row
    return row


def _default_reason(decision: str, checks: dict[str, Any], allowed: list[str]) -> str:
    for name, reason in DEFAULT_REASONS[decision].items():
        if checks.get(name, {}).get("verdict") not in (None, "pass") and reason in allowed:
            return reason
    return allowed[0]


async def _comparison(
    conn: db.Conn, tenant_id: str, checks: dict[str, Any], photos: list[db.Row]
) -> dict[str, Any] | None:
    """The other asset's photo closest to this review's, for a side-by-side look."""
    dup = checks.get("photo_not_duplicate") or {}
    match = dup.get("matchAssetId")
    if dup.get("verdict") in (None, "pass") or not match:
        return None
    theirs = await db.fetch_all(
        conn, "console_evidence_of_asset", {"asset_id": match, "tenant_id": tenant_id}
    )
    ours = [p for p in photos if p["phash"] is not None]
    best: tuple[int, db.Row, db.Row] | None = None
    for other in theirs:
        for mine in ours:
            if other["phash"] is None:
                continue
            d = hamming(mine["phash"], other["phash"])
            if best is None or d < best[0]:
                best = (d, mine, other)
    if best is None:
        return None
    return {"distance": best[0], "mine": best[1], "theirs": best[2], "asset_id": match}


@router.get("/console/reviews/{review_id}")
async def review_item(request: Request, session: Viewer, review_id: ReviewId) -> Response:
    """One review: claimed on opening, every check, the photos, the fix on the geofence."""
    need_page(session, SCOPE)
    c, p = core(request), session.principal
    reviews.check_id(review_id)
    held_by_other: db.Row | None = None
    row: db.Row | None
    async with db.connection(c.pool) as conn:
        row = await db.fetch_one(conn, "get_review", {"id": review_id, "tenant_id": p.tenant_id})
    if row is None:
        raise NotFoundError(f"review {review_id} not found")
    if row["status"] in ("pending", "expired"):
        try:
            row = await reviews.claim(
                c.pool, tenant_id=p.tenant_id, review_id=review_id, key_id=p.key_id, actor=p.actor
            )
        except ConflictError:
            async with db.connection(c.pool) as conn:
                row = await db.fetch_one(
                    conn, "get_review", {"id": review_id, "tenant_id": p.tenant_id}
                )
            assert row is not None
            if row["claim_live"]:
                held_by_other = row
    async with db.connection(c.pool) as conn:
        asset = await assets.get(conn, p.tenant_id, str(row["asset_id"]))
        locker = await db.fetch_one(
            conn, "get_locker", {"tenant_id": p.tenant_id, "locker_ref": asset["locker_ref"]}
        )
        photos = await db.fetch_all(
            conn, "evidence_of_verifications", {"ids": [row["verification_id"]]}
        )
        comparison = await _comparison(conn, p.tenant_id, row["checks"], photos)
    where = await _neighbours(request, session, review_id)
    fix = next((e for e in photos if e["lat"] is not None), None)
    drawing = None
    if fix is not None and locker is not None:
        drawing = geo.drawing(
            locker["site_lat"],
            locker["site_lon"],
            locker["geofence_m"],
            fix["lat"],
            fix["lon"],
            fix["accuracy_m"] or 0.0,
        )
    settings = c.settings
    reasons = {"approve": settings.review_reasons_approve, "reject": settings.review_reasons_reject}
    context = {
        "review": row,
        "asset": asset,
        "locker": locker,
        "photos": photos,
        "comparison": comparison,
        # What asked for a person first; the passing checks after, in their usual order.
        "checks": sorted(check_rows(row["checks"]), key=lambda r: r.verdict == "pass"),
        "drawing": drawing,
        # The fix is what the reviewer must judge when the geofence check asked: show it first.
        "map_first": drawing is not None
        and row["checks"].get("gps_in_geofence", {}).get("verdict") != "pass",
        "where": where,
        "held_by_other": held_by_other,
        "mine": row["claim_live"] and row["claimed_key"] == p.key_id,
        "open": row["status"] in ("pending", "expired"),
        "locked": held_by_other is not None or row["status"] not in ("pending", "expired"),
        "reasons": reasons,
        "defaults": {d: _default_reason(d, row["checks"], reasons[d]) for d in reasons},
        "timeout": settings.review_timeout,
    }
    return await render(request, session, "review.html", context, section="reviews")


@router.post("/console/reviews/{review_id}/decide")
async def decide(request: Request, session: Viewer, review_id: ReviewId) -> Response:
    """Approve or reject as ``POST /api/reviews/{id}/decision`` does; then the next item."""
    form = await checked_form(request, session, SCOPE)
    c, p = core(request), session.principal
    back = f"/console/reviews/{review_id}"
    try:
        body = ReviewDecision(
            decision=form.get("decision", ""),
            reason=form.get("reason") or None,
            note=form.get("note", "").strip() or None,
        )
    except ValidationError as exc:
        problem = exc.errors()[0]["msg"].removeprefix("Value error, ")
        return redirect(request, back, ("error", f"Not recorded: {problem}."))
    where = await _neighbours(request, session, review_id)
    try:
        check_reason(c.settings, body)
        row = await reviews.decide(
            c.pool,
            tenant_id=p.tenant_id,
            review_id=review_id,
            decision=body.decision,
            note=body.note,
            reason=body.reason,
            actor=p.actor,
            key_id=p.key_id,
            request_id=request.state.request_id,
        )
    except CoreError as exc:
        return redirect(request, back, ("error", f"Not recorded: {exc.message}"))
    async with db.connection(c.pool) as conn:
        asset = await assets.get(conn, p.tenant_id, str(row["asset_id"]))
    verb = "Approved" if body.decision == "approve" else "Rejected"
    text = (
        f"{verb} “{asset['name']}”"
        + (f" ({body.reason.replace('_', ' ')})" if body.reason else "")
        + f", recorded as {p.actor}. Decisions are final: there is no undo."
    )
    target = where["next_id"] or where["first_id"]
    url = f"/console/reviews/{target}" if target else "/console/reviews"
    href = f"/console/assets/{asset['id']}#audit" if session.can("assets:read") else None
    return redirect(request, url, ("ok", text), href=href)


@router.post("/console/reviews/{review_id}/claim")
async def renew(request: Request, session: Viewer, review_id: ReviewId) -> Response:
    """Renew the hold while the page is open (``POST /api/reviews/{id}/claim``)."""
    await checked_form(request, session, SCOPE)
    p = session.principal
    row = await reviews.claim(
        core(request).pool,
        tenant_id=p.tenant_id,
        review_id=review_id,
        key_id=p.key_id,
        actor=p.actor,
    )
    until: datetime = row["claimed_until"]
    return JSONResponse({"claimedBy": row["claimed_by"], "claimedUntil": until.isoformat()})


@router.post("/console/reviews/{review_id}/release")
async def release(request: Request, session: Viewer, review_id: ReviewId) -> Response:
    """Give the item back when the reviewer leaves it (``DELETE /api/reviews/{id}/claim``)."""
    await checked_form(request, session, SCOPE)
    p = session.principal
    await reviews.release(
        core(request).pool, tenant_id=p.tenant_id, review_id=review_id, key_id=p.key_id
    )
    return Response(status_code=204)


@router.get("/console/reviews/{review_id}/photo/{sha256}")
async def photo(request: Request, session: Viewer, review_id: ReviewId, sha256: Sha256) -> Response:
    """A photo of the review (or the one it resembles), as ``/api/reviews/…/evidence``."""
    need_action(session, SCOPE)
    reviews.check_id(review_id)
    c = core(request)
    async with db.connection(c.pool) as conn:
        row = await db.fetch_one(
            conn,
            "get_review_photo",
            {"id": review_id, "tenant_id": session.principal.tenant_id, "sha256": sha256},
        )
    if row is None:
        raise NotFoundError(f"review {review_id} has no photo {sha256}")
    return await photo_response(c, row)


async def photo_response(c: Any, row: db.Row) -> Response:
    """The bytes of an evidence row's photo, cacheable for good (content-addressed)."""
    try:
        data = await asyncio.to_thread(c.evidence.get, row["sha256"])
    except FileNotFoundError:
        raise CoreError(f"evidence blob {row['sha256']} is missing from the store") from None
    return Response(
        content=data,
        media_type=row["content_type"],
        headers={
            "Cache-Control": "private, max-age=31536000, immutable",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'",
        },
    )


__all__ = ["check_rows", "photo_response", "router"]
