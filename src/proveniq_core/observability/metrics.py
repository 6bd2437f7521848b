"""The Prometheus metrics (docs/architecture.md §9): their names, labels and buckets.

Everything lives in ``REGISTRY`` (with the process and GC collectors), served by
``GET /metrics``. Each process is its own scrape target: counters and histograms count what
this process did. Gauges read from shared state (``core_dlq_depth``) report the same
database in every process: aggregate them with ``max``, never ``sum``.

Labels are bounded: subsystems, operations (route templates, command types, saga and step
names), outcomes and status codes, never an asset, saga or locker id. Per-device circuits
(``locker:<ref>``) are therefore counted, not labelled: ``core_circuit_breaker_open_devices``.

Latency buckets are the standard ones (10 ms … 10 s) plus 1.5 s and 3 s, the SLO's P95 and P99
bounds for ``POST /api/assets``, so the share of requests slower than an objective is a
bucket, not an interpolation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from proveniq_core.errors import (
    LedgerConflictError,
    LedgerConstraintError,
    LedgerDownError,
    LedgerSaturatedError,
    LockerHardwareError,
    LockerTimeoutError,
    LockerUnreachableError,
)
from proveniq_core.observability import tracing

__all__ = [
    "AUDIT_OLDEST_UNSEALED",
    "AUDIT_UNSEALED",
    "CIRCUIT_STATE",
    "CIRCUIT_STATES",
    "COMPENSATIONS",
    "DB_POOL_IN_USE",
    "DB_POOL_MAX",
    "DB_POOL_WAITING",
    "DLQ_DEPTH",
    "DLQ_STATUSES",
    "LATENCY",
    "LATENCY_BUCKETS",
    "MQTT_CONNECTED",
    "OPEN_DEVICES",
    "OPS_ALERTS_LAST_RAISED",
    "OPS_ALERTS_OPEN",
    "REGISTRY",
    "REQUESTS",
    "REVIEWS_OLDEST_PENDING",
    "REVIEWS_PENDING",
    "SAGAS",
    "SAGAS_DUE",
    "SAGAS_OLDEST_DUE",
    "SAGA_BUCKETS",
    "SAGA_DURATION",
    "SAGA_OUTCOMES",
    "STEP_BUCKETS",
    "STEP_DURATION",
    "VERIFICATIONS",
    "VERIFICATION_OUTCOMES",
    "WEBHOOK_DELIVERIES",
    "WEBHOOK_ENDPOINTS",
    "declare_saga",
    "ledger_status",
    "locker_status",
    "observe",
    "saga_compensated",
    "saga_run",
    "saga_step",
    "timed",
    "verification_outcome",
    "webhook_delivery",
]

REGISTRY: Final = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

LATENCY_BUCKETS: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 3.0, 5.0, 10.0)
"""Seconds: the standard buckets (docs/architecture.md §9) plus the SLO bounds 1.5 s (P95)
and 3 s (P99)."""
STEP_BUCKETS: Final = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
"""Seconds: the edges of the step budget (docs/architecture.md §9: 5 ms … 2 s) and the link
timeout."""
SAGA_BUCKETS: Final = (*LATENCY_BUCKETS, 30.0, 60.0)

SAGA_OUTCOMES: Final = ("completed", "compensated", "failed", "compensation_failed")
"""How a saga ends; ``core_sagas_total`` counts each saga once, by one of these."""
CIRCUIT_STATES: Final = ("closed", "open", "half_open")
DLQ_STATUSES: Final = ("pending", "retrying", "exhausted")
"""The retry-queue entries still open: the backlog (resolved and discarded ones are history)."""

LATENCY: Final = Histogram(
    "core_orchestration_latency_seconds",
    "Time of one operation against a subsystem (api, ledger, locker), by outcome.",
    ["subsystem", "operation", "status"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
REQUESTS: Final = Counter(
    "core_orchestration_requests",
    "Operations against a subsystem (api, ledger, locker), by outcome.",
    ["subsystem", "operation", "status"],
    registry=REGISTRY,
)
CIRCUIT_STATE: Final = Gauge(
    "core_circuit_breaker_state",
    "1 for the circuit's current state, 0 for the others (circuits ledger and locker).",
    ["circuit", "state"],
    registry=REGISTRY,
)
OPEN_DEVICES: Final = Gauge(
    "core_circuit_breaker_open_devices",
    "Per-locker circuits (locker:<ref>) that are not closed: open or half-open.",
    registry=REGISTRY,
)
SAGA_DURATION: Final = Histogram(
    "core_saga_duration_seconds",
    "Time of one run of a saga in this process, by where it stopped (an end, or deferred).",
    ["saga", "outcome"],
    buckets=SAGA_BUCKETS,
    registry=REGISTRY,
)
SAGAS: Final = Counter(
    "core_sagas",
    "Sagas that ended in this process, by outcome.",
    ["saga", "outcome"],
    registry=REGISTRY,
)
COMPENSATIONS: Final = Counter(
    "core_saga_compensations",
    "Saga steps compensated (undone), by step.",
    ["saga", "step"],
    registry=REGISTRY,
)
STEP_DURATION: Final = Histogram(
    "core_saga_step_duration_seconds",
    "Time of one saga step forward, retries and its checkpoint included, whatever its outcome.",
    ["saga", "step"],
    buckets=STEP_BUCKETS,
    registry=REGISTRY,
)
DLQ_DEPTH: Final = Gauge(
    "core_dlq_depth",
    "Open retry-queue entries, by status (read from the database, cached for a few seconds).",
    ["queue", "status"],
    registry=REGISTRY,
)
WEBHOOK_DELIVERIES: Final = Counter(
    "core_webhook_deliveries",
    "Webhook delivery attempts, by outcome.",
    ["outcome"],
    registry=REGISTRY,
)
VERIFICATIONS: Final = Counter(
    "core_verification_outcomes",
    "Verifications decided, by outcome.",
    ["outcome"],
    registry=REGISTRY,
)
VERIFICATION_OUTCOMES: Final = ("verified", "rejected", "manual_review", "failed")
for _outcome in VERIFICATION_OUTCOMES:
    # At zero from the start: the first failure is then an increase an alert can see.
    VERIFICATIONS.labels(_outcome)


# Read at scrape time (observability/gauges.py). Per process: the broker connection and the
# pool. From the shared database (the same in every process: aggregate with max): the
# backlogs an operator is paged on, and the ops alerts stored there.
MQTT_CONNECTED: Final = Gauge(
    "core_mqtt_connected",
    "1 while this process is connected to the MQTT broker, else 0.",
    registry=REGISTRY,
)
DB_POOL_IN_USE: Final = Gauge(
    "core_db_pool_in_use",
    "Database connections of this process's pool lent out now.",
    registry=REGISTRY,
)
DB_POOL_MAX: Final = Gauge(
    "core_db_pool_max",
    "The most connections this process's pool opens (PROVENIQ_POOL_MAX).",
    registry=REGISTRY,
)
DB_POOL_WAITING: Final = Gauge(
    "core_db_pool_waiting",
    "Callers of this process waiting now for a pooled database connection.",
    registry=REGISTRY,
)
SAGAS_DUE: Final = Gauge(
    "core_sagas_due",
    "Sagas due to run that no process holds: waiting to be claimed by a worker.",
    registry=REGISTRY,
)
SAGAS_OLDEST_DUE: Final = Gauge(
    "core_sagas_oldest_due_seconds",
    "How long the longest-waiting due saga has been claimable (0 when none is due).",
    registry=REGISTRY,
)
REVIEWS_PENDING: Final = Gauge(
    "core_reviews_pending",
    "Manual reviews waiting for a decision.",
    registry=REGISTRY,
)
REVIEWS_OLDEST_PENDING: Final = Gauge(
    "core_reviews_oldest_pending_seconds",
    "Age of the oldest review waiting for a decision (0 when none); it expires at its due time.",
    registry=REGISTRY,
)
AUDIT_UNSEALED: Final = Gauge(
    "core_audit_unsealed_rows",
    "Audit rows not yet sealed into the hash chain.",
    registry=REGISTRY,
)
AUDIT_OLDEST_UNSEALED: Final = Gauge(
    "core_audit_oldest_unsealed_seconds",
    "Age of the oldest audit row not yet sealed (0 when all are sealed).",
    registry=REGISTRY,
)
WEBHOOK_ENDPOINTS: Final = Gauge(
    "core_webhook_endpoints",
    "Webhook endpoints, by status (active, disabled).",
    ["status"],
    registry=REGISTRY,
)
OPS_ALERTS_OPEN: Final = Gauge(
    "core_ops_alerts_open",
    "Ops alerts stored in the database and not resolved, by code and severity.",
    ["code", "severity"],
    registry=REGISTRY,
)
OPS_ALERTS_LAST_RAISED: Final = Gauge(
    "core_ops_alerts_last_raised_timestamp_seconds",
    "When an open ops alert of this code and severity was last raised or repeated (unix time).",
    ["code", "severity"],
    registry=REGISTRY,
)


def observe(subsystem: str, operation: str, status: str, seconds: float) -> None:
    """Count one operation and its latency."""
    LATENCY.labels(subsystem, operation, status).observe(seconds, tracing.exemplar())
    REQUESTS.labels(subsystem, operation, status).inc()


@contextmanager
def timed(subsystem: str, operation: str, status_of: Callable[[Exception], str]) -> Iterator[None]:
    """Observe the block: status ``ok``, ``status_of`` the exception that escapes it, or
    ``cancelled``."""
    started = time.perf_counter()
    status = "ok"
    try:
        yield
    except Exception as exc:
        status = status_of(exc)
        raise
    except BaseException:
        status = "cancelled"
        raise
    finally:
        observe(subsystem, operation, status, time.perf_counter() - started)


def locker_status(exc: Exception) -> str:
    """timeout, unreachable (broker, device offline or circuit open), hardware_fault, error."""
    if isinstance(exc, LockerTimeoutError):
        return "timeout"
    if isinstance(exc, LockerUnreachableError):
        return "unreachable"
    if isinstance(exc, LockerHardwareError):
        return "hardware_fault"
    return "error"


def ledger_status(exc: Exception) -> str:
    """saturated, down, conflict, constraint; aborted when the caller's own block raised
    (rolled back)."""
    if isinstance(exc, LedgerSaturatedError):
        return "saturated"
    if isinstance(exc, LedgerDownError):
        return "down"
    if isinstance(exc, LedgerConflictError):
        return "conflict"
    if isinstance(exc, LedgerConstraintError):
        return "constraint"
    return "aborted"


def declare_saga(saga: str, steps: Iterable[str]) -> None:
    """Create a saga's counters at zero, so that the first event is a visible increase."""
    for outcome in SAGA_OUTCOMES:
        SAGAS.labels(saga, outcome)
    for step in steps:
        COMPENSATIONS.labels(saga, step)


def saga_run(saga: str, outcome: str, seconds: float) -> None:
    """One run of a saga stopped at ``outcome``: an end (counted once) or deferred/error."""
    SAGA_DURATION.labels(saga, outcome).observe(seconds, tracing.exemplar())
    if outcome in SAGA_OUTCOMES:
        SAGAS.labels(saga, outcome).inc()


@contextmanager
def saga_step(saga: str, step: str) -> Iterator[None]:
    """Observe one step forward, whatever its outcome (done, failed, deferred)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        STEP_DURATION.labels(saga, step).observe(time.perf_counter() - started, tracing.exemplar())


def saga_compensated(saga: str, step: str) -> None:
    COMPENSATIONS.labels(saga, step).inc()


def webhook_delivery(outcome: str) -> None:
    """One delivery attempt: e.g. delivered, failed, dead (a bounded set, never an endpoint)."""
    WEBHOOK_DELIVERIES.labels(outcome).inc()


def verification_outcome(outcome: str) -> None:
    """One verification decided: e.g. verified, review, rejected (a bounded set)."""
    VERIFICATIONS.labels(outcome).inc()
