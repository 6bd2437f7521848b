"""Assets: search by id, name, locker and status; one asset's whole story on one page
(state history, saga timeline, verification and photos, audit rows with their chain status,
webhook events with delivery state)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from proveniq_core import db
from proveniq_core.api.evidence import Sha256
from proveniq_core.api.paging import decode_position as _decode_position
from proveniq_core.api.paging import encode_cursor as _encode_cursor
from proveniq_core.console import timeline
from proveniq_core.console.reviews import check_rows, photo_response
from proveniq_core.console.web import Viewer, core, need_action, need_page, render
from proveniq_core.errors import NotFoundError
from proveniq_core.ledger import assets, audit
from proveniq_core.saga import store

router = APIRouter(include_in_schema=False)

SCOPE = "assets:read"
STATUSES = (
    "pending",
    "pending_link",
    "link_failed",
    "linked",
    "verified",
    "rejected",
    "manual_review",
    "compensated",
)
PAGE = 50


def _search_terms(q: str, lockers: set[str]) -> dict[str, Any]:
    """One search box: an asset id, a locker ref, or part of a name."""
    q = q.strip()
    terms: dict[str, Any] = {"asset_id": None, "locker_ref": None, "name": None}
    if not q:
        return terms
    try:
        terms["asset_id"] = str(uuid.UUID(q))
        return terms
    except ValueError:
        pass
    if q in lockers:
        terms["locker_ref"] = q
    else:
        escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        terms["name"] = f"%{escaped}%"
    return terms


@router.get("/console/assets")
async def search(
    request: Request,
    session: Viewer,
    q: Annotated[str, Query(max_length=200)] = "",
    status: Annotated[str, Query(max_length=32)] = "",
    cursor: Annotated[str, Query(max_length=200)] = "",
) -> Response:
    """Assets newest first, filtered by the search box and the status (both in the URL)."""
    need_page(session, SCOPE)
    tenant = session.principal.tenant_id
    c = core(request)
    before = _decode_position(cursor) if cursor else None
    async with db.connection(c.pool) as conn:
        lockers = await db.fetch_all(
            conn, "list_lockers", {"tenant_id": tenant, "after": "", "limit": 1000}
        )
        rows = await db.fetch_all(
            conn,
            "console_search_assets",
            _search_terms(q, {r["locker_ref"] for r in lockers})
            | {
                "tenant_id": tenant,
                "status": status if status in STATUSES else None,
                "before_at": before[0] if before else None,
                "before_id": before[1] if before else None,
                "limit": PAGE + 1,
            },
        )
    more = len(rows) > PAGE
    rows = rows[:PAGE]
    next_cursor = (
        _encode_cursor(rows[-1]["created_at"].isoformat(), str(rows[-1]["id"])) if more else None
    )
    return await render(
        request,
        session,
        "assets.html",
        {"rows": rows, "q": q, "status": status, "statuses": STATUSES, "next_cursor": next_cursor},
        section="assets",
    )


async def chain_status(conn: db.Conn, rows: list[db.Row]) -> tuple[dict[int, str], db.Row | None]:
    """Each row's place in the hash chain: its hash recomputed and its link to the row
    before checked ("ok"), "unsealed" (the sealer runs every second) or what is wrong."""
    seqs = [r["seq"] - 1 for r in rows if r["seq"] is not None and r["seq"] > 1]
    before = {
        r["seq"]: r["hash"]
        for r in await db.fetch_all(conn, "console_audit_hashes", {"seqs": seqs})
    }
    status: dict[int, str] = {}
    for r in rows:
        if r["seq"] is None:
            status[r["id"]] = "unsealed"
            continue
        expected_prev = audit.GENESIS if r["seq"] == 1 else before.get(r["seq"] - 1)
        if r["prev_hash"] != expected_prev:
            status[r["id"]] = "does not link to the row before"
        elif audit.chain_hash(r["prev_hash"], r) != r["hash"]:
            status[r["id"]] = "content does not match its hash"
        else:
            status[r["id"]] = "ok"
    head = await db.fetch_one(conn, "audit_last_sealed")
    return status, head


@router.get("/console/assets/{asset_id}")
async def asset_page(
    request: Request, session: Viewer, asset_id: Annotated[str, Path(max_length=64)]
) -> Response:
    """One asset's whole story."""
    need_page(session, SCOPE)
    c, tenant = core(request), session.principal.tenant_id
    try:
        uuid.UUID(asset_id)
    except ValueError:
        raise NotFoundError(f"asset {asset_id} not found") from None
    params = {"asset_id": asset_id, "tenant_id": tenant}
    async with db.connection(c.pool) as conn:
        asset = await assets.get(conn, tenant, asset_id)
        locker = await db.fetch_one(
            conn, "get_locker", {"tenant_id": tenant, "locker_ref": asset["locker_ref"]}
        )
        saga = await store.load(conn, str(asset["saga_id"])) if asset["saga_id"] else None
        verification = await db.fetch_one(conn, "console_verification_of_asset", params)
        review = await db.fetch_one(conn, "console_review_of_asset", params)
        photos = await db.fetch_all(conn, "list_evidence", params)
        entries = await db.fetch_all(
            conn,
            "list_retry_entries",
            {
                "tenant_id": tenant,
                "asset_id": asset_id,
                "status": None,
                "before_at": None,
                "before_id": None,
                "limit": 20,
            },
        )
        trail = await db.fetch_all(
            conn,
            "console_asset_audit",
            {
                "asset_id": asset_id,
                "review_ids": [str(review["id"])] if review else [],
                "entry_ids": [str(e["id"]) for e in entries],
            },
        )
        chain, head = await chain_status(conn, trail)
        events = await db.fetch_all(conn, "console_asset_webhooks", params)
    history = [r for r in trail if r["entity_type"] == "asset"]
    drawing = timeline.build(saga[0], saga[1], verification) if saga else None
    context = {
        "asset": asset,
        "locker": locker,
        "saga": saga[0] if saga else None,
        "timeline": drawing,
        "verification": verification,
        "checks": check_rows(verification["checks"]) if verification else [],
        "review": review,
        "photos": photos,
        "entries": entries,
        "history": history,
        "trail": trail,
        "chain": chain,
        "chain_head": head,
        "chain_ok": all(v in ("ok", "unsealed") for v in chain.values()),
        "events": events,
        "held": asset["status"] in ("pending_link", "link_failed"),
    }
    return await render(request, session, "asset.html", context, section="assets")


@router.get("/console/assets/{asset_id}/photo/{sha256}")
async def asset_photo(
    request: Request,
    session: Viewer,
    asset_id: Annotated[str, Path(max_length=64)],
    sha256: Sha256,
) -> Response:
    """One of the asset's photos, as ``GET /api/assets/{id}/evidence/{sha256}``."""
    need_action(session, SCOPE)
    c, tenant = core(request), session.principal.tenant_id
    try:
        uuid.UUID(asset_id)
    except ValueError:
        raise NotFoundError(f"asset {asset_id} not found") from None
    async with db.connection(c.pool) as conn:
        row = await db.fetch_one(
            conn, "get_evidence", {"asset_id": asset_id, "tenant_id": tenant, "sha256": sha256}
        )
    if row is None:
        raise NotFoundError(f"asset {asset_id} has no evidence {sha256}")
    return await photo_response(c, row)
