"""Fault injection over HTTP (docs/architecture.md §4): ``/sim/faults`` on the fleet's book.

``router`` requires scope ``ops:write`` and acts on the Core's ``fleet`` (404 when the
process runs no simulated fleet), on the caller's tenant's lockers only: another tenant's
locker is 404, a ``"*"`` rule needs scope ``admin`` (403), and the list and a clear without
``lockerRef`` cover the tenant's lockers' rules (every rule for ``admin``).
``control_app`` serves the same routes without auth, for ``proveniq simulate --faults-port``
on loopback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request
from pydantic import BaseModel

from proveniq_core.api import envelope
from proveniq_core.api.auth import require
from proveniq_core.api.deps import CoreDep
from proveniq_core.api.models import ErrorEnvelope
from proveniq_core.api.tenancy import ADMIN, is_admin, tenant_locker_refs
from proveniq_core.errors import (
    ForbiddenError,
    NotFoundError,
    UnauthorizedError,
    ValidationFailedError,
)
from proveniq_core.locker.faults import (
    ALL_LOCKERS,
    ClearFaults,
    FaultBook,
    FaultRule,
    FaultRuleError,
    parse_control,
    parse_rule,
)


class FaultView(FaultRule):
    """An active rule: the rule as posted, its id, and the matching commands counted so far."""

    id: str
    seen: int


class FaultList(BaseModel):
    items: list[FaultView]


class FaultsCleared(BaseModel):
    cleared: int


def fault_book(core: CoreDep) -> FaultBook:
    """The fault book of the fleet simulated in this process."""
    fleet = core.fleet
    if fleet is None:
        raise NotFoundError("no simulated fleet in this process")
    return fleet.faults


Faults = Annotated[FaultBook, Depends(fault_book)]


@dataclass(frozen=True, slots=True)
class FaultScope:
    """The lockers a caller may inject faults into: ``refs``, or every one (``None``)."""

    refs: frozenset[str] | None

    def check(self, locker_ref: str) -> None:
        """403 for a ``"*"`` target without ``admin``, 404 for a locker not the caller's."""
        if self.refs is None:
            return
        if locker_ref == ALL_LOCKERS:
            raise ForbiddenError(f"A fault on every locker ('*') needs the scope {ADMIN!r}.")
        if locker_ref not in self.refs:
            raise NotFoundError(f"No locker {locker_ref!r}.")

    def visible(self, locker_ref: str) -> bool:
        """Whether the caller sees rules targeting ``locker_ref``."""
        return self.refs is None or locker_ref in self.refs


async def fault_scope(request: Request, core: CoreDep) -> FaultScope:
    """The caller's scope, from the principal the router's auth dependency stored."""
    principal = getattr(request.state, "principal", None)
    if principal is None:  # the routes without auth are mounted by control_app only
        raise UnauthorizedError("Missing API key: send 'Authorization: Bearer pk_…'.")
    if is_admin(principal):
        return FaultScope(None)
    return FaultScope(frozenset(await tenant_locker_refs(core.pool, principal)))


Scope = Annotated[FaultScope, Depends(fault_scope)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "model": ErrorEnvelope}
    for code, text in {
        401: "missing or invalid API key",
        403: "the key lacks the scope ops:write (or admin, for lockerRef '*')",
        404: "no simulated fleet in this process, or no such locker of the caller's",
        422: "invalid fault rule",
    }.items()
}
_RULE_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": FaultRule.model_json_schema()}},
    }
}

_routes = APIRouter(tags=["simulator"])


def _invalid(exc: FaultRuleError) -> ValidationFailedError:
    return ValidationFailedError(str(exc), details=exc.problems)


@_routes.post(
    "/sim/faults",
    status_code=201,
    response_model=FaultView,
    response_model_exclude_none=True,
    responses=_ERRORS,
    openapi_extra=_RULE_BODY,
)
async def add_fault(faults: Faults, scope: Scope, body: Annotated[Any, Body()]) -> dict[str, Any]:
    """Inject a fault into the simulated lockers; it counts commands from now on."""
    try:
        rule = parse_rule(body)
    except FaultRuleError as exc:
        raise _invalid(exc) from None
    scope.check(rule.lockerRef)
    return faults.add(rule).view()


@_routes.get(
    "/sim/faults",
    response_model=FaultList,
    response_model_exclude_none=True,
    responses=_ERRORS,
)
async def list_faults(faults: Faults, scope: Scope) -> dict[str, Any]:
    """The active fault rules on the caller's lockers, oldest first."""
    return {"items": [e.view() for e in faults.list() if scope.visible(e.rule.lockerRef)]}


@_routes.delete("/sim/faults", response_model=FaultsCleared, responses=_ERRORS)
async def clear_faults(
    faults: Faults,
    scope: Scope,
    locker_ref: Annotated[
        str | None,
        Query(alias="lockerRef", description="Clear only the rules with this lockerRef ('*' too)."),
    ] = None,
) -> FaultsCleared:
    """Clear every fault rule, or those targeting ``lockerRef`` exactly."""
    try:
        control = parse_control({"clear": True, "lockerRef": locker_ref})
    except FaultRuleError as exc:
        raise _invalid(exc) from None
    assert isinstance(control, ClearFaults)  # a mapping with "clear" parses as one or fails
    if control.lockerRef is not None:
        scope.check(control.lockerRef)
        return FaultsCleared(cleared=faults.clear(control.lockerRef))
    if scope.refs is None:
        return FaultsCleared(cleared=faults.clear())
    targets = {e.rule.lockerRef for e in faults.list()} & scope.refs
    return FaultsCleared(cleared=sum(faults.clear(ref) for ref in targets))


router = APIRouter()
"""The routes with scope ``ops:write``; mount with ``app.include_router(router)``."""
router.include_router(_routes, dependencies=[Depends(require("ops:write"))])


def control_app(faults: FaultBook) -> FastAPI:
    """The routes without auth on ``faults``, for ``proveniq simulate``'s loopback port."""
    app = FastAPI(
        title="Proveniq locker simulator",
        description="Fault injection for the simulated lockers (docs/architecture.md §4).",
    )
    envelope.install(app)
    app.include_router(_routes)
    app.dependency_overrides[fault_book] = lambda: faults
    app.dependency_overrides[fault_scope] = lambda: FaultScope(None)
    return app


__all__ = [
    "FaultList",
    "FaultScope",
    "FaultView",
    "FaultsCleared",
    "control_app",
    "fault_book",
    "fault_scope",
    "router",
]
