"""The circuit breakers for operators (docs/architecture.md §3): list them, reset one.

Both routes read this process's memory only, so they answer while the database is down
(keys the database verified lately still authenticate, see ``keys.KeyCache``), which is when
an operator needs them. A reset is logged with the key that asked rather than audited: the
audit trail lives in the database that may be the reason for the reset.

Tenants share the process: a key sees the fleet circuits (``ledger``, ``locker``) and the
``locker:<ref>`` circuits of its tenant's lockers, and resets only the latter; scope ``admin``
sees and resets every circuit. Without ``admin`` the routes read the tenant's lockers from
the database, so while it is down only an ``admin`` key can use them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from proveniq_core.api.auth import require
from proveniq_core.api.deps import CoreDep
from proveniq_core.api.tenancy import check_locker, is_admin, require_admin, tenant_locker_refs
from proveniq_core.errors import NotFoundError
from proveniq_core.ledger.keys import Principal
from proveniq_core.resilience.breaker import BreakerRegistry, BreakerSnapshot, CircuitBreaker
from proveniq_core.service import Core

log = structlog.get_logger(__name__)

router = APIRouter(tags=["ops"])

CircuitState = Literal["closed", "open", "half_open"]

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or invalid API key"},
    403: {"description": "the key lacks the scope (admin for the fleet circuits' reset)"},
    404: {"description": "no circuit of that name among the caller's"},
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
    """Every circuit of this process the caller may see, by name; a locker's appears once it
    has been used."""
    breakers = core.breakers
    views = [circuit_view(s, breakers) for s in await visible_snapshots(core, principal)]
    return CircuitPage(items=[v for v in views if state is None or v.state == state])


async def visible_snapshots(core: Core, principal: Principal) -> list[BreakerSnapshot]:
    """The circuits ``principal`` may see: the fleet's and its tenant's lockers' (all: admin)."""
    snapshots = core.breakers.snapshots()
    if is_admin(principal):
        return snapshots
    refs = await tenant_locker_refs(core.pool, principal)
    return [s for s in snapshots if _device(s["name"]) in refs | {None}]


async def resettable(core: Core, principal: Principal, name: str) -> CircuitBreaker:
    """The circuit ``name`` if ``principal`` may reset it: 404 for none of the caller's, 403 for
    a fleet circuit without ``admin``."""
    ref = _device(name)
    if ref is not None:
        await check_locker(core.pool, principal, ref)
    if name not in core.breakers:
        raise NotFoundError(f"No circuit named {name!r}.")
    if ref is None:
        require_admin(principal, f"Resetting the fleet circuit {name!r}")
    return core.breakers[name]


_DEVICE_PREFIX = "locker:"


def _device(name: str) -> str | None:
    """The locker ref of a per-device circuit; ``None`` for a fleet circuit."""
    return name.removeprefix(_DEVICE_PREFIX) if name.startswith(_DEVICE_PREFIX) else None


@router.post("/api/ops/circuits/{name}/reset", response_model=CircuitView, responses=_ERRORS)
async def reset_circuit(
    name: str,
    core: CoreDep,
    principal: Annotated[Principal, Depends(require("ops:write"))],
) -> CircuitView:
    """Close a circuit now and forget its counts: calls go through again at once."""
    breakers = core.breakers
    breaker = await resettable(core, principal, name)
    log.warning("circuit_reset", circuit=name, was=breaker.state.value, actor=principal.actor)
    breaker.reset()
    return circuit_view(breaker.snapshot(), breakers)


__all__ = [
    "CircuitPage",
    "CircuitView",
    "circuit_view",
    "resettable",
    "router",
    "visible_snapshots",
]
