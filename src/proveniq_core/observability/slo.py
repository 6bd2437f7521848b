"""The latency SLO read from this process's histograms (docs/architecture.md §9).

Percentiles are estimated the way PromQL's ``histogram_quantile`` does: find the bucket that
holds the rank and interpolate linearly inside it (a rank in the ``+Inf`` bucket gives the
highest finite bound). They cover this process since it started; a fleet's figure is
Prometheus' job (``sum by (le)`` over the scrape targets).

The budget times one synchronous transaction in seven steps; the registration saga commits
each step on its own, so its steps map onto the budget's as ``STEP_BUDGETS`` says. The budget's
step 1 (validate and authorize) and step 7 (audit and respond) happen in the API around the
saga, and its audit rows are written inside each step's own transaction: they have no step.
"""

from __future__ import annotations

import math
from typing import Final, NamedTuple

from prometheus_client import Histogram

__all__ = ["SLO_OPERATION", "SLO_TARGETS", "STEP_BUDGETS", "Budget", "buckets", "quantile"]

SLO_OPERATION: Final = "POST /api/assets"
SLO_TARGETS: Final = {"p50": (0.50, 0.5), "p95": (0.95, 1.5), "p99": (0.99, 3.0)}
"""Name: (quantile, the SLO bound in seconds)."""


class Budget(NamedTuple):
    """The budget (docs/architecture.md §9) of one registration step, in seconds."""

    seed_steps: str
    target: float
    max: float


STEP_BUDGETS: Final = {
    "create_ledger_record": Budget("2 Begin Transaction + 3 Ledger Write", 0.035, 0.110),
    "link_locker": Budget("4 Locker Link", 0.200, 2.000),
    "update_status": Budget("5 Commit Transaction", 0.010, 0.050),
    "queue_verification": Budget("6 Queue Verification", 0.005, 0.020),
}
"""Registration step: the budget's steps it stands for and their summed target and max."""


def buckets(histogram: Histogram, **labels: str) -> list[tuple[float, float]]:
    """The cumulative ``(upper bound, count)`` buckets of the series matching ``labels``,
    summed over the other labels, by upper bound (the last is ``inf``)."""
    summed: dict[float, float] = {}
    for family in histogram.collect():
        for sample in family.samples:
            if not sample.name.endswith("_bucket"):
                continue
            if any(sample.labels.get(k) != v for k, v in labels.items()):
                continue
            le = float(sample.labels["le"])
            summed[le] = summed.get(le, 0.0) + sample.value
    return sorted(summed.items())


def quantile(q: float, cumulative: list[tuple[float, float]]) -> float | None:
    """The ``q`` quantile (0 < q ≤ 1) estimated from cumulative buckets; None when empty."""
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    rank = q * cumulative[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in cumulative:
        if count >= rank:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower
