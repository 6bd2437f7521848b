"""An operator's answer to an ops alert: acknowledge it ("seen, on it") or resolve it.

Scope ``ops:write``; a tenant's operators act on its alerts and on the system's (no
tenant), the ones ``GET /api/ops/alerts`` shows them. Both are audited with the key's name.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request

from proveniq_core.api.auth import require
from proveniq_core.api.deps import CoreDep
from proveniq_core.api.models import ERRORS, AlertView, ErrorEnvelope, alert_view
from proveniq_core.ledger import alerts
from proveniq_core.ledger.keys import Principal

router = APIRouter(tags=["ops"])

Writer = Annotated[Principal, Depends(require("ops:write"))]
AlertId = Annotated[str, Path(description="the alert's alertId")]
_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    409: {"description": "the alert is resolved already", "model": ErrorEnvelope},
}


@router.post("/api/ops/alerts/{alert_id}/acknowledge", response_model=AlertView, responses=_ERRORS)
async def acknowledge_alert(
    request: Request, core: CoreDep, alert_id: AlertId, principal: Writer
) -> AlertView:
    """Say someone is on it: the alert stays open, marked acknowledged (the first time)."""
    row = await alerts.acknowledge(
        core.pool,
        alert_id=alert_id,
        tenant_id=principal.tenant_id,
        actor=principal.actor,
        request_id=request.state.request_id,
    )
    return alert_view(row)


@router.post("/api/ops/alerts/{alert_id}/resolve", response_model=AlertView, responses=_ERRORS)
async def resolve_alert(
    request: Request, core: CoreDep, alert_id: AlertId, principal: Writer
) -> AlertView:
    """Close the alert by hand; should its cause recur, a new alert opens."""
    row = await alerts.resolve(
        core.pool,
        alert_id=alert_id,
        tenant_id=principal.tenant_id,
        actor=principal.actor,
        request_id=request.state.request_id,
    )
    return alert_view(row)


__all__ = ["router"]
