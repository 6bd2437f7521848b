"""The alerts route for operators: ops alerts, one per cause, most recently raised first."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from proveniq_core.api.auth import require
from proveniq_core.api.deps import CoreDep
from proveniq_core.api.models import ERRORS, AlertPage, alert_view
from proveniq_core.api.paging import keyset_page
from proveniq_core.ledger.keys import Principal

router = APIRouter()


@router.get("/api/ops/alerts", response_model=AlertPage, responses=ERRORS)
async def list_alerts(
    core: CoreDep,
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
    rows, next_cursor = await keyset_page(
        core.pool, "list_alerts", filters, limit, cursor, "last_at"
    )
    return AlertPage(items=[alert_view(r) for r in rows], nextCursor=next_cursor)
