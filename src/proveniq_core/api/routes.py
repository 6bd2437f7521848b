"""HTTP routes: assets, lockers, saga and alert inspection, and health."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from proveniq_core import db
from proveniq_core.api.auth import require
from proveniq_core.api.idempotency import IdempotencyKey, idempotent_model, run_idempotent
from proveniq_core.api.models import (
    AlertPage,
    AssetCreate,
    AssetCreated,
    AssetDeferred,
    AssetPage,
    AssetView,
    ErrorEnvelope,
    LockerCreate,
    LockerPage,
    LockerView,
    Readiness,
    ResponseWarning,
    SagaPage,
    SagaView,
    Site,
    alert_view,
    asset_view,
    saga_summary,
    saga_view,
)
from proveniq_core.errors import CoreError, NotFoundError, ValidationFailedError
from proveniq_core.ledger import assets
from proveniq_core.ledger.keys import Principal
from proveniq_core.saga import registration, store
from proveniq_core.saga.registration import Outcome
from proveniq_core.saga.store import SagaStatus

router = APIRouter()
health = APIRouter(tags=["health"])
"""Liveness and readiness: served by every process, workers included."""

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "model": ErrorEnvelope}
    for code, text in {
        401: "missing or invalid API key",
        403: "the key lacks the scope",
        404: "not found (or not this tenant's)",
        422: "invalid input",
        503: "database unavailable",
    }.items()
}


def _core(request: Request) -> Any:
    return request.app.state.core


def _encode_cursor(*parts: str) -> str:
    return base64.urlsafe_b64encode("|".join(parts).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, n: int) -> list[str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValidationFailedError("Invalid cursor.", details={"field": "cursor"}) from None
    parts = raw.split("|")
    if len(parts) != n:
        raise ValidationFailedError("Invalid cursor.", details={"field": "cursor"})
    return parts


def _decode_position(cursor: str) -> tuple[datetime, str]:
    """A (timestamp, uuid) cursor: the sort key of the last row of the previous page."""
    at, row_id = _decode_cursor(cursor, 2)
    try:
        return datetime.fromisoformat(at), str(uuid.UUID(row_id))
    except ValueError:
        raise ValidationFailedError("Invalid cursor.", details={"field": "cursor"}) from None


async def _keyset_page(
    request: Request,
    query: str,
    filters: dict[str, Any],
    limit: int,
    cursor: str | None,
    order_by: str,
) -> tuple[list[db.Row], str | None]:
    """One page of ``query``, ordered by (``order_by``, id) descending, and the next cursor."""
    before = _decode_position(cursor) if cursor else None
    params = filters | {
        "before_at": before[0] if before else None,
        "before_id": before[1] if before else None,
        "limit": limit + 1,
    }
    async with db.connection(_core(request).pool) as conn:
        rows = await db.fetch_all(conn, query, params)
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, _encode_cursor(rows[-1][order_by].isoformat(), str(rows[-1]["id"]))


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
    principal: Annotated[Principal, Depends(require("assets:write"))],
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """With an ``Idempotency-Key`` header, a retry gets the first answer again (DESIGN.md §3)."""
    core = _core(request)

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
    core: Any, body: AssetCreate, principal: Principal, request_id: str
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
        actor=f"key:{principal.key_id}",
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
    assert done.error is not None  # held for an operator (502) or failed
    raise done.error


@router.get("/api/assets/{asset_id}", response_model=AssetView, responses=ERRORS)
async def get_asset(
    asset_id: str,
    request: Request,
    response: Response,
    principal: Annotated[Principal, Depends(require("assets:read"))],
) -> AssetView:
    async with db.connection(_core(request).pool) as conn:
        row = await assets.get(conn, principal.tenant_id, asset_id)
    response.headers["ETag"] = f'"{row["version"]}"'
    return asset_view(row)


@router.get("/api/assets", response_model=AssetPage, responses=ERRORS)
async def list_assets(
    request: Request,
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
    before = _decode_position(cursor) if cursor else None
    async with db.connection(_core(request).pool) as conn:
        rows = await assets.page(
            conn, principal.tenant_id, status=status, limit=limit + 1, before=before
        )
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        next_cursor = _encode_cursor(last["created_at"].isoformat(), str(last["id"]))
    return AssetPage(items=[asset_view(r) for r in rows], nextCursor=next_cursor)


def _locker_view(row: dict[str, Any], online: bool | None) -> LockerView:
    return LockerView(
        lockerRef=row["locker_ref"],
        site=Site(lat=row["site_lat"], lon=row["site_lon"]),
        geofenceM=row["geofence_m"],
        online=online,
        createdAt=row["created_at"],
    )


@router.post(
    "/api/lockers",
    status_code=201,
    response_model=LockerView,
    responses={**ERRORS, 409: {"description": "locker already registered"}},
)
async def register_locker(
    body: LockerCreate,
    request: Request,
    principal: Annotated[Principal, Depends(require("ops:write"))],
    idempotency_key: IdempotencyKey = None,
) -> Any:
    core = _core(request)
    return await idempotent_model(
        request,
        core.pool,
        tenant_id=principal.tenant_id,
        body=body,
        status_code=201,
        make=lambda: _register_locker(core, body, principal, request.state.request_id),
    )


async def _register_locker(
    core: Any, body: LockerCreate, principal: Principal, request_id: str
) -> LockerView:
    async with db.transaction(core.pool) as conn:
        row = await assets.register_locker(
            conn,
            tenant_id=principal.tenant_id,
            locker_ref=body.lockerRef,
            lat=body.site.lat,
            lon=body.site.lon,
            geofence_m=body.geofenceM,
            actor=f"key:{principal.key_id}",
            request_id=request_id,
        )
    return _locker_view(row, core.gateway.presence(body.lockerRef))


@router.get("/api/lockers", response_model=LockerPage, responses=ERRORS)
async def list_lockers(
    request: Request,
    principal: Annotated[Principal, Depends(require("assets:read"))],
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> LockerPage:
    core = _core(request)
    after = _decode_cursor(cursor, 1)[0] if cursor else ""
    async with db.connection(core.pool) as conn:
        rows = await db.fetch_all(
            conn,
            "list_lockers",
            {"tenant_id": principal.tenant_id, "after": after, "limit": limit + 1},
        )
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = _encode_cursor(rows[-1]["locker_ref"])
    items = [_locker_view(r, core.gateway.presence(r["locker_ref"])) for r in rows]
    return LockerPage(items=items, nextCursor=next_cursor)


@router.get("/api/ops/sagas", response_model=SagaPage, responses=ERRORS)
async def list_sagas(
    request: Request,
    principal: Annotated[Principal, Depends(require("ops:read"))],
    status: Annotated[SagaStatus | None, Query()] = None,
    name: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> SagaPage:
    """Sagas newest first: this tenant's and the system's (no tenant), in pages."""
    filters = {"tenant_id": principal.tenant_id, "status": status, "name": name}
    rows, next_cursor = await _keyset_page(
        request, "list_sagas", filters, limit, cursor, "created_at"
    )
    return SagaPage(items=[saga_summary(r) for r in rows], nextCursor=next_cursor)


@router.get("/api/ops/sagas/{saga_id}", response_model=SagaView, responses=ERRORS)
async def get_saga(
    saga_id: str,
    request: Request,
    principal: Annotated[Principal, Depends(require("ops:read"))],
) -> SagaView:
    try:
        uuid.UUID(saga_id)
    except ValueError:
        raise NotFoundError(f"saga {saga_id} not found") from None
    async with db.connection(_core(request).pool) as conn:
        found = await store.load(conn, saga_id)
    if found is None or found[0]["tenant_id"] not in (None, principal.tenant_id):
        raise NotFoundError(f"saga {saga_id} not found")
    return saga_view(*found)


@router.get("/api/ops/alerts", response_model=AlertPage, responses=ERRORS)
async def list_alerts(
    request: Request,
    principal: Annotated[Principal, Depends(require("ops:read"))],
    open_: Annotated[
        bool | None,
        Query(alias="open", description="true: unresolved only; false: resolved only"),
    ] = None,
    code: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> AlertPage:
    """Ops alerts, most recently raised first: this tenant's and the system's (no tenant)."""
    filters = {"tenant_id": principal.tenant_id, "open": open_, "code": code}
    rows, next_cursor = await _keyset_page(
        request, "list_alerts", filters, limit, cursor, "last_at"
    )
    return AlertPage(items=[alert_view(r) for r in rows], nextCursor=next_cursor)


@health.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@health.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "database down or migrations pending"}},
)
async def readyz(request: Request) -> JSONResponse:
    """Ready when the database answers and migrations are current; the broker may be degraded.

    200 ``ready``: everything up; 200 ``degraded``: serving, but the broker is down or a
    circuit is not closed (lockers answer later: links are deferred); 503 ``unready``: the
    database is unreachable (or its circuit open) or migrations are pending.
    """
    core = _core(request)
    checks: dict[str, str] = {}
    try:
        async with db.connection(core.pool) as conn:
            await conn.execute("SELECT 1")
            pending = await db.pending_migrations(conn)
        checks["database"] = "ok"
        checks["migrations"] = "ok" if not pending else f"pending: {pending}"
    except CoreError:
        checks["database"] = "down"
        checks["migrations"] = "unknown"
    checks["broker"] = "ok" if core.gateway.connected else "degraded"
    circuits = {s["name"]: s["state"] for s in core.breakers.snapshots()}
    checks["ledgerCircuit"] = circuits.get("ledger", "closed")
    not_closed = sorted(name for name, state in circuits.items() if state != "closed")
    ready = checks["database"] == "ok" and checks["migrations"] == "ok"
    healthy = checks["broker"] == "ok" and not not_closed
    status = "ready" if ready and healthy else ("degraded" if ready else "unready")
    return JSONResponse(
        {"status": status, "checks": checks, "openCircuits": not_closed},
        status_code=200 if ready else 503,
    )
