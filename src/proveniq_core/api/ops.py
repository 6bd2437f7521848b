"""The ops API for the failure path (docs/operations.md): the retry queue, held assets, maintenance.

Reads need scope ``ops:read``, actions ``ops:write``; everything is scoped to the caller's
tenant (another tenant's entry, asset or locker is a 404). An action that runs a saga runs
it within the request, up to the link budget, and answers where it ended (200) or that it
goes on in the background (202).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import AwareDatetime, BaseModel, Field, field_validator

from proveniq_core import db
from proveniq_core.api.auth import require
from proveniq_core.api.deps import CoreDep
from proveniq_core.api.models import ERRORS, LockerRef, Strict
from proveniq_core.api.paging import keyset_page
from proveniq_core.ledger import assets
from proveniq_core.ledger.keys import Principal
from proveniq_core.saga import operator
from proveniq_core.service import Core

router = APIRouter(tags=["ops"])

Reader = Annotated[Principal, Depends(require("ops:read"))]
Writer = Annotated[Principal, Depends(require("ops:write"))]
EntryStatus = Literal["pending", "retrying", "exhausted", "resolved", "discarded"]

_ACTION_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    409: {"description": "not in a state this action applies to, or busy in another process"},
}


class RetryEntryView(BaseModel):
    """A deferred locker operation (a DLQ entry)."""

    id: str
    assetId: str
    lockerRef: str
    operation: str
    retryCount: int = Field(description="failed retries so far; maintenance does not count")
    nextRetryAt: datetime | None = Field(description="the next automatic try; null: none")
    lastError: dict[str, Any] | None
    status: EntryStatus
    sagaId: str
    firstErrorAt: datetime
    createdAt: datetime
    updatedAt: datetime
    closedAt: datetime | None


class RetryEntryPage(BaseModel):
    items: list[RetryEntryView]
    nextCursor: str | None


class RetryEntryOutcome(RetryEntryView):
    """The entry after an action, and where its asset stands."""

    assetStatus: str


class AssetOutcome(BaseModel):
    """Where a held asset stands after an operator's action."""

    assetId: str
    status: str = Field(description="linked, pending_link, link_failed or compensated")
    lockerId: str | None
    sagaStatus: str | None = Field(description="running while held; compensating, compensated")
    retryAt: datetime | None = Field(description="pending_link: the next automatic try")
    lastError: dict[str, Any] | None = Field(description="why it is not linked (held assets)")
    retryEntry: RetryEntryView | None = Field(description="the asset's latest retry-queue entry")


class MaintenanceRequest(Strict):
    until: AwareDatetime | None = Field(
        description="maintenance ends then (at most 30 days ahead); null or a past time: now"
    )

    @field_validator("until")
    @classmethod
    def _not_too_far(cls, until: datetime | None) -> datetime | None:
        if until is not None and until > datetime.now(UTC) + operator.MAX_MAINTENANCE:
            raise ValueError("must be at most 30 days ahead")
        return until


class DiscardRequest(Strict):
    reason: Annotated[str, Field(min_length=1, max_length=500)] | None = Field(
        None, description="why retrying stops: audited with the discard"
    )


class RefusedEntry(BaseModel):
    id: str
    code: str
    message: str


class BulkRetryOutcome(BaseModel):
    """What "retry all exhausted" did."""

    count: int = Field(description="exhausted entries retried now")
    resolved: int = Field(description="of those, linked now (entry resolved)")
    items: list[RetryEntryView] = Field(description="the retried entries after their retry")
    refused: list[RefusedEntry] = Field(description="entries that could not be retried, and why")


class LockerMaintenance(BaseModel):
    lockerRef: str
    maintenanceUntil: datetime | None = Field(description="null: not in maintenance")
    wokenEntries: int = Field(description="retry-queue entries made due by ending maintenance")


def _going_on(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    return {
        202: {
            "model": model,
            "description": "the saga goes on in the background past the link budget",
        }
    }


def _actor(principal: Principal) -> str:
    return principal.actor


def entry_view(row: db.Row) -> RetryEntryView:
    return RetryEntryView(
        id=str(row["id"]),
        assetId=str(row["asset_id"]),
        lockerRef=row["locker_ref"],
        operation=row["operation"],
        retryCount=row["retry_count"],
        nextRetryAt=row["next_retry_at"],
        lastError=row["last_error"],
        status=row["status"],
        sagaId=str(row["saga_id"]),
        firstErrorAt=row["first_error_at"],
        createdAt=row["created_at"],
        updatedAt=row["updated_at"],
        closedAt=row["closed_at"],
    )


async def _entry_outcome(core: Core, row: db.Row, tenant_id: str) -> RetryEntryOutcome:
    async with db.connection(core.pool) as conn:
        asset = await assets.get(conn, tenant_id, str(row["asset_id"]))
    return RetryEntryOutcome(**entry_view(row).model_dump(), assetStatus=asset["status"])


async def _asset_outcome(core: Core, asset_id: str, tenant_id: str) -> AssetOutcome:
    async with db.connection(core.pool) as conn:
        asset = await assets.get(conn, tenant_id, asset_id)
        saga = await db.fetch_one(conn, "get_saga", {"id": asset["saga_id"]})
    entry = await core.retry_queue.for_asset(asset_id)
    held = asset["status"] in operator.HELD
    return AssetOutcome(
        assetId=asset_id,
        status=asset["status"],
        lockerId=asset["locker_id"],
        sagaStatus=saga["status"] if saga else None,
        retryAt=entry["next_retry_at"] if held and entry and entry["status"] == "pending" else None,
        lastError=entry["last_error"] if held and entry else None,
        retryEntry=entry_view(entry) if entry else None,
    )


@router.get("/api/ops/retry-queue", response_model=RetryEntryPage, responses=ERRORS)
async def list_retry_entries(
    core: CoreDep,
    principal: Reader,
    asset_id: Annotated[uuid.UUID | None, Query(alias="assetId")] = None,
    status: Annotated[EntryStatus | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> RetryEntryPage:
    """Retry-queue entries, newest first, in pages; filter by asset and status."""
    filters = {
        "tenant_id": principal.tenant_id,
        "asset_id": str(asset_id) if asset_id else None,
        "status": status,
    }
    rows, next_cursor = await keyset_page(
        core.pool, "list_retry_entries", filters, limit, cursor, "created_at"
    )
    return RetryEntryPage(items=[entry_view(r) for r in rows], nextCursor=next_cursor)


EntryId = Annotated[str, Path(description="the entry's id")]
AssetId = Annotated[str, Path(description="the asset's id")]


@router.get("/api/ops/retry-queue/{entry_id}", response_model=RetryEntryView, responses=ERRORS)
async def get_retry_entry(core: CoreDep, entry_id: EntryId, principal: Reader) -> RetryEntryView:
    return entry_view(await core.retry_queue.get(entry_id, principal.tenant_id))


@router.post(
    "/api/ops/retry-queue/{entry_id}/retry",
    response_model=RetryEntryOutcome,
    responses=_ACTION_ERRORS | _going_on(RetryEntryOutcome),
)
async def retry_entry(
    request: Request, response: Response, core: CoreDep, entry_id: EntryId, principal: Writer
) -> RetryEntryOutcome:
    """Retry the entry's locker operation now, due or not, exhausted or discarded alike.

    200 with the entry as the retry left it (resolved: linked); 202 with the entry
    ``retrying`` when the locker has not answered within the link budget: the retry goes on
    and the entry and asset follow the device's answer. 409 when it is resolved, its asset
    is no longer held, or another operator or a worker is retrying it right now."""
    row, settled = await operator.retry_entry(
        core.retry_queue,
        entry_id,
        principal.tenant_id,
        actor=_actor(principal),
        request_id=request.state.request_id,
        wait=core.operator_wait,
    )
    if not settled:
        response.status_code = 202
    return await _entry_outcome(core, row, principal.tenant_id)


@router.post(
    "/api/ops/retry-queue/{entry_id}/discard",
    response_model=RetryEntryOutcome,
    responses=_ACTION_ERRORS,
)
async def discard_entry(
    request: Request,
    core: CoreDep,
    entry_id: EntryId,
    principal: Writer,
    body: DiscardRequest | None = None,
) -> RetryEntryOutcome:
    """Stop retrying: the asset stays held until an operator retries or cancels it. The
    reason, if given, is audited with the discard.

    409 when it is resolved or discarded already, or being retried right now."""
    row = await operator.discard_entry(
        core.retry_queue,
        entry_id,
        principal.tenant_id,
        actor=_actor(principal),
        request_id=request.state.request_id,
        reason=body.reason if body else None,
    )
    return await _entry_outcome(core, row, principal.tenant_id)


@router.post(
    "/api/ops/retry-queue/retry-exhausted", response_model=BulkRetryOutcome, responses=ERRORS
)
async def retry_exhausted(request: Request, core: CoreDep, principal: Writer) -> BulkRetryOutcome:
    """Retry every exhausted entry now (up to 500), as "retry now" does one: the answer
    counts them, how many linked, and which could not be retried and why. It waits up to the
    link budget for them together; those still ``retrying`` then go on in the background."""
    retried, refused = await operator.retry_exhausted(
        core.retry_queue,
        principal.tenant_id,
        actor=_actor(principal),
        request_id=request.state.request_id,
        wait=core.operator_wait,
    )
    return BulkRetryOutcome(
        count=len(retried),
        resolved=sum(1 for r in retried if r["status"] == "resolved"),
        items=[entry_view(r) for r in retried],
        refused=[RefusedEntry(id=i, code=e.code, message=e.message) for i, e in refused],
    )


@router.post(
    "/api/ops/assets/{asset_id}/retry-link",
    response_model=AssetOutcome,
    responses=_ACTION_ERRORS | _going_on(AssetOutcome),
)
async def retry_link(
    request: Request, response: Response, core: CoreDep, asset_id: AssetId, principal: Writer
) -> AssetOutcome:
    """Link a link_failed asset again with a new locker command.

    200 with how it went: linked, pending_link (deferred again, with retryAt) or link_failed
    (the locker refused again); 202 with the asset pending_link when the locker has not
    answered within the link budget (the link goes on; the asset follows the device's
    answer). 409 unless the asset is link_failed."""
    result = await operator.retry_link(
        core.engine,
        asset_id,
        principal.tenant_id,
        actor=_actor(principal),
        request_id=request.state.request_id,
        wait=core.operator_wait,
    )
    if result is None:
        response.status_code = 202
    return await _asset_outcome(core, asset_id, principal.tenant_id)


@router.post(
    "/api/ops/assets/{asset_id}/cancel",
    response_model=AssetOutcome,
    responses=_ACTION_ERRORS | _going_on(AssetOutcome),
)
async def cancel_asset(
    request: Request, response: Response, core: CoreDep, asset_id: AssetId, principal: Writer
) -> AssetOutcome:
    """Cancel a held registration (pending_link or link_failed): its saga compensates.

    The asset ends compensated, its locker link undone and its entries discarded: 200 when
    that is done within the link budget; 202 with sagaStatus compensating while the undo
    goes on (a locker slow to answer the unlink); while an undo step keeps failing it is
    retried and sagaStatus stays compensating."""
    result = await operator.cancel(
        core.engine,
        asset_id,
        principal.tenant_id,
        actor=_actor(principal),
        request_id=request.state.request_id,
        wait=core.operator_wait,
    )
    if result is None:
        response.status_code = 202
    return await _asset_outcome(core, asset_id, principal.tenant_id)


@router.post(
    "/api/ops/lockers/{locker_ref}/maintenance",
    response_model=LockerMaintenance,
    responses=ERRORS,
)
async def locker_maintenance(
    request: Request,
    core: CoreDep,
    locker_ref: Annotated[LockerRef, Path()],
    body: MaintenanceRequest,
    principal: Writer,
) -> LockerMaintenance:
    """Put a locker in maintenance until a time, or end it (until null or past).

    Meanwhile its links answer 202 pending_link and wait, without counting as failures;
    ending maintenance retries them now."""
    row, woken = await operator.set_maintenance(
        core.retry_queue,
        principal.tenant_id,
        locker_ref,
        body.until,
        actor=_actor(principal),
        request_id=request.state.request_id,
    )
    return LockerMaintenance(
        lockerRef=row["locker_ref"], maintenanceUntil=row["maintenance_until"], wokenEntries=woken
    )
