"""The circuit breakers for operators (DESIGN.md §3, §8): list them, reset one.

Both routes read this process's memory only, so they answer while the database is down
(keys the database verified lately still authenticate, see ``keys.KeyCache``), which is when
an operator needs them. A reset is logged with the key that asked rather than audited: the
audit trail lives in the database that may be the reason for the reset.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from proveniq_core.api.auth import require
from proveniq_core.api.deps import CoreDep
from proveniq_core.errors import NotFoundError
from proveniq_core.ledger.keys import Principal
from proveniq_core.resilience.breaker import BreakerRegistry, BreakerSnapshot

log = structlog.get_logger(__name__)

router = APIRouter(tags=["ops"])

CircuitState = Literal["closed", "open", "half_open"]

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or invalid API key"},
    403: {"description": "the key lacks the scope"},
    404: {"description": "no circuit of that name"},
}


class CircuitView(BaseModel):
    """One circuit breaker now; the counts are those of its current state."""

    name: str = Field(description="ledger, locker (the broker) or locker:<lockerRef>")
    state: CircuitState
    callsInWindow: int = Field(description="closed: calls counted in the rolling window")
    failures: int = Field(description="closed: failures counted in the rolling window")
    successes: int = Field(description="closed: in the window; half-open: probes that passed")
    probeInFlight: bool
    openedAt: datetime | None = Field(description="when it last opened; null once closed")
    retryAfter: float = Field(description="seconds until it lets a probe through; 0 unless open")


class CircuitPage(BaseModel):
    items: list[CircuitView]


def circuit_view(snapshot: BreakerSnapshot, breakers: BreakerRegistry) -> CircuitView:
    opened_at = None
    if snapshot["opened_at"] is not None:
        ago = breakers.clock() - snapshot["opened_at"]
        opened_at = datetime.now(UTC) - timedelta(seconds=ago)
    return CircuitView(
        name=snapshot["name"],
        state=snapshot["state"],
        callsInWindow=snapshot["calls_in_window"],
        failures=snapshot["failures"],
        successes=snapshot["successes"],
        probeInFlight=snapshot["probe_in_flight"],
        openedAt=opened_at,
        retryAfter=round(snapshot["retry_after"], 3),
    )


@router.get("/api/ops/circuits", response_model=CircuitPage, responses=_ERRORS)
async def list_circuits(
    core: CoreDep,
    principal: Annotated[Principal, Depends(require("ops:read"))],
    state: Annotated[CircuitState | None, Query(description="Only circuits in this state.")] = None,
) -> CircuitPage:
    """Every circuit of this process, by name; a locker's appears once it has been used."""
    breakers = core.breakers
    views = [circuit_view(s, breakers) for s in breakers.snapshots()]
    return CircuitPage(items=[v for v in views if state is None or v.state == state])


@router.post("/api/ops/circuits/{name}/reset", response_model=CircuitView, responses=_ERRORS)
async def reset_circuit(
    name: str,
    core: CoreDep,
    principal: Annotated[Principal, Depends(require("ops:write"))],
) -> CircuitView:
    """Close a circuit now and forget its counts: calls go through again at once."""
    breakers = core.breakers
    if name not in breakers:
        raise NotFoundError(f"No circuit named {name!r}.")
    breaker = breakers[name]
    log.warning("circuit_reset", circuit=name, was=breaker.state.value, actor=principal.actor)
    breaker.reset()
    return circuit_view(breaker.snapshot(), breakers)


__all__ = ["CircuitPage", "CircuitView", "circuit_view", "router"]
