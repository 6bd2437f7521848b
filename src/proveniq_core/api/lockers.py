"""The lockers routes: register a tenant's locker (its site and geofence), list them, and
read one's device shadow (what Core asked it and what it reported)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request

from proveniq_core import db
from proveniq_core.api.auth import require
from proveniq_core.api.deps import CoreDep
from proveniq_core.api.idempotency import IdempotencyKey, idempotent_model
from proveniq_core.api.models import (
    ERRORS,
    LockerCreate,
    LockerPage,
    LockerRef,
    LockerShadow,
    LockerView,
    Site,
)
from proveniq_core.api.paging import decode_cursor, encode_cursor
from proveniq_core.errors import NotFoundError, ValidationFailedError
from proveniq_core.ledger import assets
from proveniq_core.ledger.assets import Locker
from proveniq_core.ledger.keys import Principal
from proveniq_core.locker import shadow
from proveniq_core.locker.gateway import LockerGateway
from proveniq_core.locker.protocol import LOCKER_REF_PATTERN
from proveniq_core.service import Core

_REF = re.compile(LOCKER_REF_PATTERN)

router = APIRouter()


def _locker_view(locker: Locker, gateway: LockerGateway) -> LockerView:
    ref = locker.locker_ref
    return LockerView(
        lockerRef=ref,
        site=Site(lat=locker.site_lat, lon=locker.site_lon),
        geofenceM=locker.geofence_m,
        online=gateway.presence(ref),
        presenceSince=gateway.presence_since(ref),
        maintenanceUntil=locker.maintenance_until,
        createdAt=locker.created_at,
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
    core: CoreDep,
    principal: Annotated[Principal, Depends(require("ops:write"))],
    idempotency_key: IdempotencyKey = None,
) -> Any:
    return await idempotent_model(
        request,
        core.pool,
        tenant_id=principal.tenant_id,
        body=body,
        status_code=201,
        make=lambda: _register_locker(core, body, principal, request.state.request_id),
    )


async def _register_locker(
    core: Core, body: LockerCreate, principal: Principal, request_id: str
) -> LockerView:
    async with db.transaction(core.pool) as conn:
        locker = await assets.register_locker(
            conn,
            tenant_id=principal.tenant_id,
            locker_ref=body.lockerRef,
            lat=body.site.lat,
            lon=body.site.lon,
            geofence_m=body.geofenceM,
            actor=principal.actor,
            request_id=request_id,
        )
    return _locker_view(locker, core.gateway)


@router.get("/api/lockers", response_model=LockerPage, responses=ERRORS)
async def list_lockers(
    core: CoreDep,
    principal: Annotated[Principal, Depends(require("assets:read"))],
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> LockerPage:
    after = decode_cursor(cursor, 1)[0] if cursor else ""
    if cursor and not _REF.match(after):  # a cursor holds a locker ref: anything else is forged
        raise ValidationFailedError("Invalid cursor.", details=[{"field": "cursor"}])
    async with db.connection(core.pool) as conn:
        lockers = await assets.locker_page(conn, principal.tenant_id, after=after, limit=limit + 1)
    next_cursor = None
    if len(lockers) > limit:
        lockers = lockers[:limit]
        next_cursor = encode_cursor(lockers[-1].locker_ref)
    items = [_locker_view(lk, core.gateway) for lk in lockers]
    return LockerPage(items=items, nextCursor=next_cursor)


@router.get("/api/lockers/{locker_ref}/shadow", response_model=LockerShadow, responses=ERRORS)
async def locker_shadow(
    core: CoreDep,
    principal: Annotated[Principal, Depends(require("ops:read"))],
    locker_ref: Annotated[LockerRef, Path()],
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
) -> LockerShadow:
    """The locker's device shadow: the presence it last reported, and the commands Core
    waited on past a request (parked), newest first, each with the device's answer once it
    came (null: still waiting). A late answer links its asset within about a second."""
    params = {"tenant_id": principal.tenant_id, "locker_ref": locker_ref}
    async with db.connection(core.pool) as conn:
        row = await db.fetch_one(conn, "get_locker", params)
        if row is None:
            raise NotFoundError(f"locker {locker_ref} not found")
        status, at = await shadow.presence(conn, locker_ref)
        commands = await shadow.commands(conn, locker_ref, limit)
    return LockerShadow(
        lockerRef=locker_ref, reportedStatus=status, reportedAt=at, commands=commands
    )
