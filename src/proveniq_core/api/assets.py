"""The assets routes: register an asset (the registration saga), read one, list them."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta
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
from proveniq_core.errors import (
    CoreError,
    LockerHardwareError,
    PartialCommitError,
    PostCommitTimeoutError,
)
from proveniq_core.ledger import assets
from proveniq_core.ledger.keys import Principal
from proveniq_core.service import Core

router = APIRouter()


@router.post(
    "/api/assets",
    status_code=201,
    response_model=AssetCreated,
    response_model_exclude_none=True,
    responses={
        **ERRORS,
        202: {"model": AssetDeferred, "description": "link deferred: pending_link"},
        409: {"description": "another process is finishing this registration"},
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
    """With an ``Idempotency-Key`` header, a retry gets the first answer again (DESIGN.md §3)."""

    async def register() -> Response:
        async with db.connection(core.pool) as conn:
            await assets.get_locker(conn, principal.tenant_id, body.lockerRef)
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
    """Run the registration saga and answer what it reached: 201 linked, 202 deferred, or
    the failure's envelope (raised)."""
    asset_id, verification_id = str(uuid.uuid4()), str(uuid.uuid4())
    result = await core.engine.run(
        core.registration,
        {
            "assetId": asset_id,
            "verificationId": verification_id,
            "tenantId": principal.tenant_id,
            "name": body.name,
            "category": body.category,
            "lockerRef": body.lockerRef,
            "actor": principal.actor,
            "requestId": request_id,
        },
        tenant_id=principal.tenant_id,
    )
    created = AssetCreated(
        assetId=asset_id,
        lockerId=result.data.get("lockerId"),
        verificationId=verification_id,
        status="linked",
    )
    cause = result.deferral.cause if result.deferral else None
    if isinstance(cause, PostCommitTimeoutError):
        created.warnings = [ResponseWarning(code=cause.code, message=cause.mode.user_message)]
    if result.ok or isinstance(cause, PostCommitTimeoutError):
        return JSONResponse(created.model_dump(mode="json", exclude_none=True), status_code=201)
    if isinstance(cause, LockerHardwareError):
        cause.asset_id = asset_id
        raise cause
    if cause is not None:  # timeout, unreachable, maintenance: the partial commit is done
        delay = result.deferred
        retry_at = (
            None
            if delay is None or math.isinf(delay)
            else datetime.now(UTC) + timedelta(seconds=delay)
        )
        deferred = AssetDeferred(
            assetId=asset_id, status="pending_link", retryAt=retry_at, reason=cause.code
        )
        return JSONResponse(deferred.model_dump(mode="json"), status_code=202)
    exc = result.error
    if result.status in ("compensating", "compensation_failed"):
        # Steps committed and could not (yet) be undone: the saga retries and alerts.
        raise PartialCommitError(
            f"registration failed at {result.failed_step} and is being undone",
            asset_id=asset_id,
        ) from exc
    if isinstance(exc, CoreError):
        exc.asset_id = asset_id if result.status == "compensated" else None
        raise exc
    raise CoreError(f"registration failed at {result.failed_step}", asset_id=asset_id) from exc


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
