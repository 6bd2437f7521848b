"""Fault injection over HTTP (DESIGN.md §4): ``/sim/faults`` on the simulated fleet's book.

``router`` requires scope ``ops:write`` and acts on the Core's ``fleet`` (404 when the
process runs no simulated fleet). ``control_app`` serves the same routes without auth, for
``proveniq simulate --faults-port`` on loopback.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, Query
from pydantic import BaseModel

from proveniq_core.api import envelope
from proveniq_core.api.auth import require
from proveniq_core.api.deps import CoreDep
from proveniq_core.api.models import ErrorEnvelope
from proveniq_core.errors import NotFoundError, ValidationFailedError
from proveniq_core.locker.faults import (
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

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "model": ErrorEnvelope}
    for code, text in {
        401: "missing or invalid API key",
        403: "the key lacks the scope ops:write",
        404: "no simulated fleet in this process",
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
async def add_fault(faults: Faults, body: Annotated[Any, Body()]) -> dict[str, Any]:
    """Inject a fault into the simulated lockers; it counts commands from now on."""
    try:
        rule = parse_rule(body)
    except FaultRuleError as exc:
        raise _invalid(exc) from None
    return faults.add(rule).view()


@_routes.get(
    "/sim/faults",
    response_model=FaultList,
    response_model_exclude_none=True,
    responses=_ERRORS,
)
async def list_faults(faults: Faults) -> dict[str, Any]:
    """The active fault rules, oldest first."""
    return {"items": [entry.view() for entry in faults.list()]}


@_routes.delete("/sim/faults", response_model=FaultsCleared, responses=_ERRORS)
async def clear_faults(
    faults: Faults,
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
    return FaultsCleared(cleared=faults.clear(control.lockerRef))


router = APIRouter()
"""The routes with scope ``ops:write``; mount with ``app.include_router(router)``."""
router.include_router(_routes, dependencies=[Depends(require("ops:write"))])


def control_app(faults: FaultBook) -> FastAPI:
    """The routes without auth on ``faults``, for ``proveniq simulate``'s loopback port."""
    app = FastAPI(
        title="Proveniq locker simulator",
        description="Fault injection for the simulated lockers (DESIGN.md §4).",
    )
    envelope.install(app)
    app.include_router(_routes)
    app.dependency_overrides[fault_book] = lambda: faults
    return app


__all__ = ["FaultList", "FaultView", "FaultsCleared", "control_app", "fault_book", "router"]
