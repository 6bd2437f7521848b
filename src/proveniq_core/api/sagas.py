"""The sagas routes for operators: sagas newest first, and one saga's step timeline."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from proveniq_core import db
from proveniq_core.api.auth import require
from proveniq_core.api.deps import CoreDep
from proveniq_core.api.models import ERRORS, SagaPage, SagaView, saga_summary, saga_view
from proveniq_core.api.paging import keyset_page
from proveniq_core.errors import NotFoundError
from proveniq_core.ledger.keys import Principal
from proveniq_core.saga import store
from proveniq_core.saga.store import SagaStatus

router = APIRouter()


@router.get("/api/ops/sagas", response_model=SagaPage, responses=ERRORS)
async def list_sagas(
    core: CoreDep,
    principal: Annotated[Principal, Depends(require("ops:read"))],
    status: Annotated[SagaStatus | None, Query()] = None,
    name: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> SagaPage:
    """Sagas newest first: this tenant's and the system's (no tenant), in pages."""
    filters = {"tenant_id": principal.tenant_id, "status": status, "name": name}
    rows, next_cursor = await keyset_page(
        core.pool, "list_sagas", filters, limit, cursor, "created_at"
    )
    return SagaPage(items=[saga_summary(r) for r in rows], nextCursor=next_cursor)


@router.get("/api/ops/sagas/{saga_id}", response_model=SagaView, responses=ERRORS)
async def get_saga(
    saga_id: str,
    core: CoreDep,
    principal: Annotated[Principal, Depends(require("ops:read"))],
) -> SagaView:
    try:
        uuid.UUID(saga_id)
    except ValueError:
        raise NotFoundError(f"saga {saga_id} not found") from None
    async with db.connection(core.pool) as conn:
        found = await store.load(conn, saga_id)
    if found is None or found[0]["tenant_id"] not in (None, principal.tenant_id):
        raise NotFoundError(f"saga {saga_id} not found")
    return saga_view(*found)
