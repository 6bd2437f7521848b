"""``GET /api/ops/slo``: the registration latency SLO and step times, as this process saw them.

An estimate, not a measurement: percentiles are interpolated inside the histogram buckets of
``core_orchestration_latency_seconds`` and ``core_saga_step_duration_seconds`` (see
``observability.slo``), over this process since it started. Scope ``ops:read``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from proveniq_core.api.auth import require
from proveniq_core.api.models import ERRORS
from proveniq_core.ledger.keys import Principal
from proveniq_core.observability import metrics, slo
from proveniq_core.observability.window import REGISTRATIONS
from proveniq_core.saga.registration import NAME as REGISTRATION

router = APIRouter(tags=["ops"])

BASIS = (
    "this process since it started; percentiles interpolated linearly inside histogram "
    "buckets, as PromQL histogram_quantile does"
)


class Percentile(BaseModel):
    quantile: float
    seconds: float | None = Field(description="the estimate; null before any request")
    targetSeconds: float = Field(description="the seed's SLO bound")
    met: bool | None = Field(description="the estimate is within the bound; null: no data")


class RequestLatency(BaseModel):
    operation: str = Field(description="POST /api/assets, every response whatever its status")
    count: int
    p50: Percentile
    p95: Percentile
    p99: Percentile


class StepTime(BaseModel):
    step: str = Field(description="a step of the asset_registration saga")
    seedSteps: str = Field(description="the seed's §3.2 steps it stands for")
    count: int = Field(description="runs of the step forward, deferred and failed ones too")
    medianSeconds: float | None
    budgetTargetSeconds: float
    budgetMaxSeconds: float
    withinTarget: bool | None
    withinMax: bool | None


class SloReport(BaseModel):
    basis: str = Field(description="what the figures cover and how they are estimated")
    requests: RequestLatency
    steps: list[StepTime]


def _percentile(name: str, cumulative: list[tuple[float, float]]) -> Percentile:
    q, target = slo.SLO_TARGETS[name]
    seconds = slo.quantile(q, cumulative)
    return Percentile(
        quantile=q,
        seconds=None if seconds is None else round(seconds, 4),
        targetSeconds=target,
        met=None if seconds is None else seconds <= target,
    )


def _step(name: str, budget: slo.Budget) -> StepTime:
    cumulative = slo.buckets(metrics.STEP_DURATION, saga=REGISTRATION, step=name)
    median = slo.quantile(0.5, cumulative)
    return StepTime(
        step=name,
        seedSteps=budget.seed_steps,
        count=int(cumulative[-1][1]) if cumulative else 0,
        medianSeconds=None if median is None else round(median, 4),
        budgetTargetSeconds=budget.target,
        budgetMaxSeconds=budget.max,
        withinTarget=None if median is None else median <= budget.target,
        withinMax=None if median is None else median <= budget.max,
    )


@router.get("/api/ops/slo", response_model=SloReport, responses=ERRORS)
async def slo_report(
    principal: Annotated[Principal, Depends(require("ops:read"))],
    window: Annotated[
        Literal["process", "hour"],
        Query(description="process: since this process started; hour: the last hour"),
    ] = "process",
) -> SloReport:
    """P50/P95/P99 of ``POST /api/assets`` against the SLO (0.5 / 1.5 / 3 s), and the median
    of each registration step beside the seed's budget for it."""
    basis = BASIS
    if window == "hour":
        cumulative, covered = REGISTRATIONS.recent()
        basis = BASIS.replace("since it started", f"over the last {covered / 60:.0f} min")
    else:
        cumulative = slo.buckets(metrics.LATENCY, subsystem="api", operation=slo.SLO_OPERATION)
    return SloReport(
        basis=basis,
        requests=RequestLatency(
            operation=slo.SLO_OPERATION,
            count=int(cumulative[-1][1]) if cumulative else 0,
            p50=_percentile("p50", cumulative),
            p95=_percentile("p95", cumulative),
            p99=_percentile("p99", cumulative),
        ),
        steps=[_step(name, budget) for name, budget in slo.STEP_BUDGETS.items()],
    )
