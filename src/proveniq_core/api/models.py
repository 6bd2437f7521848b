"""Request and response bodies: camelCase on the wire; unknown fields are refused."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from proveniq_core import db
from proveniq_core.api.inputs import printable

LockerRef = Annotated[
    str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", examples=["locker-001"])
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class AssetCreate(Strict):
    name: Annotated[
        str,
        Field(min_length=1, max_length=200, examples=["Rolex Submariner 16610"]),
        AfterValidator(printable),
    ]
    category: Annotated[
        str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", examples=["watch", "equipment"])
    ]
    lockerRef: LockerRef


class ResponseWarning(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    code: str = Field(description="the taxonomy code, e.g. E_LOCKER_HARDWARE")
    message: str
    severity: str
    retryable: bool
    requestId: str
    assetId: str | None = None
    details: list[Any] | None = Field(default=None, description="always a list when present")


class ErrorEnvelope(BaseModel):
    """Every error response: one envelope (docs/architecture.md §3)."""

    error: ErrorBody


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
"""The error answers most routes declare in OpenAPI, each with the envelope."""


class Readiness(BaseModel):
    status: str = Field(
        description="ready; degraded (serving, but the database is busy, the broker is "
        "down, a circuit is not closed or a worker process of serve --workers is not up); "
        "unready (database unreachable or migrations pending: 503)"
    )
    checks: dict[str, str] = Field(
        description="database: ok|busy (answering, but no connection of this process's "
        "pool came free within 2 s: 200 degraded)|down; migrations: ok|pending: [...]|unknown; "
        "broker: ok|degraded; ledgerCircuit: closed|open|half_open; in a serve --workers N "
        "process only, workers: ok|<up>/<N> up"
    )
    openCircuits: list[str] = Field(
        description="circuits not closed (open or half-open): ledger, locker, locker:<ref>"
    )


class AssetCreated(BaseModel):
    assetId: str
    lockerId: str | None
    verificationId: str
    status: str
    warnings: list[ResponseWarning] | None = Field(
        None,
        description="E_TIMEOUT_POST_COMMIT: created, but a later update "
        "(queueing the verification) completes asynchronously",
    )


class AssetDeferred(BaseModel):
    """202: the asset is recorded; the locker link is deferred and retried, or another
    process finishes the registration (docs/architecture.md §3)."""

    assetId: str
    status: str = Field(description="pending_link; with E_CONFLICT, the asset's state now")
    retryAt: datetime | None = Field(description="the next automatic try; null: held")
    reason: str = Field(
        description="E_LOCKER_TIMEOUT or E_LOCKER_UNREACHABLE; E_CONFLICT: this process lost"
        " the registration to another (it was starved), which finishes it: follow the asset"
    )


class VerificationView(BaseModel):
    verificationId: str
    status: str
    reasons: list[str]
    completedAt: datetime | None


class AssetView(BaseModel):
    assetId: str
    name: str
    category: str
    lockerRef: str
    lockerId: str | None
    status: str
    version: int
    sagaId: str | None
    createdAt: datetime
    updatedAt: datetime
    verification: VerificationView | None


class AssetPage(BaseModel):
    items: list[AssetView]
    nextCursor: str | None


class Site(Strict):
    lat: Annotated[float, Field(ge=-90, le=90)]
    lon: Annotated[float, Field(ge=-180, le=180)]


class LockerCreate(Strict):
    lockerRef: LockerRef
    site: Site
    geofenceM: Annotated[float, Field(gt=0, le=100_000)] = 100.0


class LockerView(BaseModel):
    lockerRef: str
    site: Site
    geofenceM: float
    online: bool | None
    presenceSince: datetime | None = Field(
        None, description="when this process saw the presence change (offline: last seen)"
    )
    maintenanceUntil: datetime | None = Field(None, description="null: not in maintenance")
    createdAt: datetime


class ShadowCommand(BaseModel):
    commandId: str
    type: str | None = Field(description="null: an answer handed over before the park")
    assetId: str | None
    askedAt: datetime = Field(description="when Core parked waiting on it")
    reply: dict[str, Any] | None = Field(description="the device's answer; null: not yet")
    repliedAt: datetime | None


class LockerShadow(BaseModel):
    """What Core asked the locker and what the device last reported."""

    lockerRef: str
    reportedStatus: Literal["online", "offline"] | None = Field(
        description="the presence the device last reported; null: none since registration"
    )
    reportedAt: datetime | None
    commands: list[ShadowCommand]


class LockerPage(BaseModel):
    items: list[LockerView]
    nextCursor: str | None


class StepView(BaseModel):
    step: str
    stepIndex: int
    phase: str
    status: str
    attempt: int
    owner: str | None
    startedAt: datetime
    finishedAt: datetime | None
    durationMs: float | None
    errorCode: str | None
    error: dict[str, Any] | None


def _due(run_at: datetime) -> datetime | None:
    return None if run_at == db.NEVER else run_at


class SagaSummary(BaseModel):
    sagaId: str
    name: str
    status: str
    owner: str | None = Field(description="the process driving it now, if any")
    epoch: int = Field(description="how many times it has been claimed")
    runAt: datetime | None = Field(description="when it is (or was) due; null: held until woken")
    createdAt: datetime
    finishedAt: datetime | None
    durationMs: float | None = Field(description="created to finished; null while unfinished")
    errorCode: str | None = Field(description="the failure that stopped or compensated it")
    lastStep: str | None = Field(description="the step running now, or the last one recorded")
    lastStepPhase: str | None
    lastStepStatus: str | None


class SagaPage(BaseModel):
    items: list[SagaSummary]
    nextCursor: str | None


class AlertView(BaseModel):
    alertId: str
    code: str
    severity: str
    message: str
    subject: dict[str, Any] = Field(description="what it is about: sagaId, assetId, step, …")
    count: int = Field(description="occurrences while open")
    firstAt: datetime
    lastAt: datetime
    resolvedAt: datetime | None = Field(description="null while the alert is open")
    acknowledgedAt: datetime | None = Field(None, description="an operator has seen it")
    acknowledgedBy: str | None = None
    resolvedBy: str | None = Field(None, description="null: resolved by Core itself")


class AlertPage(BaseModel):
    items: list[AlertView]
    nextCursor: str | None


class SagaView(BaseModel):
    sagaId: str
    name: str
    status: str
    owner: str | None = Field(description="the process driving it now, if any")
    epoch: int = Field(description="how many times it has been claimed")
    leaseUntil: datetime | None
    runAt: datetime | None = Field(description="when it is (or was) due; null: held until woken")
    compensationRounds: int
    createdAt: datetime
    finishedAt: datetime | None
    durationMs: float | None
    error: dict[str, Any] | None
    steps: list[StepView]


def asset_view(row: dict[str, Any]) -> AssetView:
    verification = None
    if row.get("verification_id") is not None:
        verification = VerificationView(
            verificationId=str(row["verification_id"]),
            status=row["verification_status"],
            reasons=list(row["verification_reasons"] or []),
            completedAt=row["verification_completed_at"],
        )
    return AssetView(
        assetId=str(row["id"]),
        name=row["name"],
        category=row["category"],
        lockerRef=row["locker_ref"],
        lockerId=row["locker_id"],
        status=row["status"],
        version=row["version"],
        sagaId=str(row["saga_id"]) if row["saga_id"] else None,
        createdAt=row["created_at"],
        updatedAt=row["updated_at"],
        verification=verification,
    )


def _ms(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds() * 1000, 3)


def saga_view(saga: dict[str, Any], steps: list[dict[str, Any]]) -> SagaView:
    return SagaView(
        sagaId=str(saga["id"]),
        name=saga["name"],
        status=saga["status"],
        owner=saga["owner"],
        epoch=saga["epoch"],
        leaseUntil=saga["lease_until"],
        runAt=_due(saga["run_at"]),
        compensationRounds=saga["rounds"],
        createdAt=saga["created_at"],
        finishedAt=saga["finished_at"],
        durationMs=_ms(saga["created_at"], saga["finished_at"]),
        error=saga["error"],
        steps=[
            StepView(
                step=s["name"],
                stepIndex=s["step_index"],
                phase=s["phase"],
                status=s["status"],
                attempt=s["attempt"],
                owner=s["owner"],
                startedAt=s["started_at"],
                finishedAt=s["finished_at"],
                durationMs=_ms(s["started_at"], s["finished_at"]),
                errorCode=(s["error"] or {}).get("code"),
                error=s["error"],
            )
            for s in steps
        ],
    )


def saga_summary(row: dict[str, Any]) -> SagaSummary:
    return SagaSummary(
        sagaId=str(row["id"]),
        name=row["name"],
        status=row["status"],
        owner=row["owner"],
        epoch=row["epoch"],
        runAt=_due(row["run_at"]),
        createdAt=row["created_at"],
        finishedAt=row["finished_at"],
        durationMs=_ms(row["created_at"], row["finished_at"]),
        errorCode=(row["error"] or {}).get("code"),
        lastStep=row["last_step"],
        lastStepPhase=row["last_step_phase"],
        lastStepStatus=row["last_step_status"],
    )


def alert_view(row: dict[str, Any]) -> AlertView:
    return AlertView(
        alertId=str(row["id"]),
        code=row["code"],
        severity=row["severity"],
        message=row["message"],
        subject=row["subject"],
        count=row["count"],
        firstAt=row["first_at"],
        lastAt=row["last_at"],
        resolvedAt=row["resolved_at"],
        acknowledgedAt=row.get("acknowledged_at"),
        acknowledgedBy=row.get("acknowledged_by"),
        resolvedBy=row.get("resolved_by"),
    )
