"""The assets routes: register an asset (the registration saga), read one, list them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from proveniq_core import db
from proveniq_core.api.auth import require
from proveniq_core.api.deps import CoreDep
from proveniq_core.api.idempotency import IdempotencyKey, run_idempotent
from proveniq_core.api.models import (
    ERRORS,
    AssetCreate,
    AssetCreated,
    AssetDeferred,
    AssetPage,
    AssetView,
    ResponseWarning,
    asset_view,
)
from proveniq_core.api.paging import decode_position, encode_cursor
from proveniq_core.ledger import assets
from proveniq_core.ledger.keys import Principal
from proveniq_core.saga import registration
from proveniq_core.saga.registration import Outcome
from proveniq_core.service import Core

router = APIRouter()


@router.post(
    "/api/assets",
    status_code=201,
    response_model=AssetCreated,
    response_model_exclude_none=True,
    responses={
        **ERRORS,
        202: {
            "model": AssetDeferred,
            "description": "link deferred (pending_link), or the registration is being"
            " finished by another process (reason E_CONFLICT)",
        },
        502: {"description": "locker hardware fault: the asset is held as link_failed"},
    },
    summary="Register an asset: ledger record, locker link, verification",
)
async def create_asset(
    body: AssetCreate,
    request: Request,
    core: CoreDep,
    principal: Annotated[Principal, Depends(require("assets:write"))],
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """With an ``Idempotency-Key`` header, a retry gets the first answer again
    (docs/architecture.md §3)."""

    async def register() -> Response:
        return await _register(core, body, principal, request.state.request_id)

    return await run_idempotent(
        request,
        core.pool,
        tenant_id=principal.tenant_id,
        body=body.model_dump(mode="json"),
        handler=register,
    )


async def _register(
    core: Core, body: AssetCreate, principal: Principal, request_id: str
) -> Response:
    """Run the registration saga and map its outcome: 201 linked, 202 deferred, or the
    error's envelope (raised: 502 when held for an operator)."""
    done = await registration.register(
        core.engine,
        core.registration,
        tenant_id=principal.tenant_id,
        name=body.name,
        category=body.category,
        locker_ref=body.lockerRef,
        actor=principal.actor,
        request_id=request_id,
    )
    if done.outcome is Outcome.LINKED:
        created = AssetCreated(
            assetId=done.asset_id,
            lockerId=done.locker_id,
            verificationId=done.verification_id,
            status="linked",
        )
        if (late := done.warning) is not None:
            created.warnings = [ResponseWarning(code=late.code, message=late.mode.user_message)]
        return JSONResponse(created.model_dump(mode="json", exclude_none=True), status_code=201)
    if done.outcome is Outcome.DEFERRED:
        deferred = AssetDeferred(
            assetId=done.asset_id, status="pending_link", retryAt=done.retry_at, reason=done.reason
        )
        return JSONResponse(deferred.model_dump(mode="json"), status_code=202)
    if done.outcome is Outcome.TAKEN_OVER:  # the asset exists; another process finishes it
        async with db.connection(core.pool) as conn:
            asset = await assets.get(conn, principal.tenant_id, done.asset_id)
        going = AssetDeferred(
            assetId=done.asset_id, status=asset["status"], retryAt=None, reason=str(done.reason)
        )
        return JSONResponse(going.model_dump(mode="json"), status_code=202)
    assert done.error is not None  # held for an operator (502) or failed
    raise done.error


@router.get("/api/assets/{asset_id}", response_model=AssetView, responses=ERRORS)
async def get_asset(
    asset_id: str,
    core: CoreDep,
    response: Response,
    principal: Annotated[Principal, Depends(require("assets:read"))],
) -> AssetView:
    async with db.connection(core.pool) as conn:
        row = await assets.get(conn, principal.tenant_id, asset_id)
    response.headers["ETag"] = f'"{row["version"]}"'
    return asset_view(row)


@router.get("/api/assets", response_model=AssetPage, responses=ERRORS)
async def list_assets(
    core: CoreDep,
    principal: Annotated[Principal, Depends(require("assets:read"))],
    status: Annotated[
        str | None,
        Query(
            pattern="^(pending|pending_link|link_failed|linked|verified|rejected|manual_review|compensated)$"
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> AssetPage:
    before = decode_position(cursor) if cursor else None
    async with db.connection(core.pool) as conn:
        rows = await assets.page(
            conn, principal.tenant_id, status=status, limit=limit + 1, before=before
        )
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        next_cursor = encode_cursor(last["created_at"].isoformat(), str(last["id"]))
    return AssetPage(items=[asset_view(r) for r in rows], nextCursor=next_cursor)
