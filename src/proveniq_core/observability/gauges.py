"""The gauges that are read rather than counted, refreshed when ``/metrics`` is scraped.

Circuit states are read from the breakers at scrape time rather than pushed on each
transition: an open breaker turns half-open only when its state is next read, so a pushed
gauge would say ``open`` long after the breaker stopped refusing calls.

The broker connection and the pool's use are this process's own, read at every scrape.

The retry queue's depth, the backlogs an operator is paged on (due sagas, pending reviews,
unsealed audit rows, webhook endpoints) and the open ops alerts come from the database, at
most once per ``ttl`` seconds and within ``timeout`` seconds, through ``BacklogReader``, a
reader the composition root supplies (``service``) that reads straight from the pool: a
scrape is not a call through the ledger circuit, so observing never opens, probes or closes
it. While that circuit is not closed, or when the database does not answer in time, the last
values stay and ``/metrics`` still answers: the ledger circuit's own gauge says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import structlog

from proveniq_core.observability import metrics
from proveniq_core.observability.metrics import (
    CIRCUIT_STATE,
    CIRCUIT_STATES,
    DLQ_DEPTH,
    DLQ_STATUSES,
    OPEN_DEVICES,
)
from proveniq_core.resilience.breaker import BreakerRegistry, State
from proveniq_core.resilience.circuits import FLEET_CIRCUIT, LEDGER_CIRCUIT, is_device_circuit

log = structlog.get_logger(__name__)

DLQ_QUEUE: Final = "locker_link"
"""The ``queue`` label of the retry queue's entries (deferred locker links)."""


@dataclass(frozen=True, slots=True)
class DatabaseBacklog:
    """What one scrape reads from the database, every tenant at once."""

    retry_depth: Mapping[str, int]
    """The retry queue's open entries by status (``{"pending": 2, "exhausted": 1}``)."""
    backlog: Mapping[str, Any] | None = None
    """One ``scrape_backlog`` row: due sagas, pending reviews, unsealed audit rows, endpoints."""
    alerts: Sequence[Mapping[str, Any]] = field(default_factory=tuple)
    """Open ops alerts by ``code`` and ``severity``: ``n`` and ``last_at`` (unix seconds)."""


BacklogReader = Callable[[], Awaitable[DatabaseBacklog]]
PoolStats = Callable[[], Mapping[str, int]]


def set_circuits(breakers: BreakerRegistry) -> dict[str, State]:
    """Set ``core_circuit_breaker_state`` for the named circuits (``ledger``, ``locker``, …;
    one not created yet is closed) and count the per-device ones (``locker:<ref>``).
    Returns the named circuits' states."""
    states = {LEDGER_CIRCUIT: State.CLOSED, FLEET_CIRCUIT: State.CLOSED}
    devices = 0
    for breaker in breakers:
        state = breaker.state
        if not is_device_circuit(breaker.name):
            states[breaker.name] = state
        elif state is not State.CLOSED:
            devices += 1
    for name, current in states.items():
        for state_name in CIRCUIT_STATES:
            CIRCUIT_STATE.labels(name, state_name).set(1 if current.value == state_name else 0)
    OPEN_DEVICES.set(devices)
    return states


class Connected(Protocol):
    """What the scrape reads of the locker gateway."""

    @property
    def connected(self) -> bool: ...


def set_pool(stats: Mapping[str, int]) -> None:
    """Set the pool gauges from the pool's own counts (``psycopg_pool``'s ``get_stats()``)."""
    size, available = stats.get("pool_size", 0), stats.get("pool_available", 0)
    metrics.DB_POOL_IN_USE.set(max(size - available, 0))
    metrics.DB_POOL_MAX.set(stats.get("pool_max", 0))
    metrics.DB_POOL_WAITING.set(stats.get("requests_waiting", 0))


def set_backlog(row: Mapping[str, Any]) -> None:
    """Set the backlog gauges from one ``scrape_backlog`` row."""
    metrics.SAGAS_DUE.set(row["sagas_due"])
    metrics.SAGAS_OLDEST_DUE.set(max(row["oldest_due_s"], 0.0))
    metrics.REVIEWS_PENDING.set(row["reviews_pending"])
    metrics.REVIEWS_OLDEST_PENDING.set(max(row["oldest_review_s"], 0.0))
    metrics.AUDIT_UNSEALED.set(row["audit_unsealed"])
    metrics.AUDIT_OLDEST_UNSEALED.set(max(row["oldest_unsealed_s"], 0.0))
    metrics.WEBHOOK_ENDPOINTS.labels("active").set(row["webhooks_active"])
    metrics.WEBHOOK_ENDPOINTS.labels("disabled").set(row["webhooks_disabled"])


class ScrapeGauges:
    """Refreshes the read gauges of one running Core."""

    def __init__(
        self,
        breakers: BreakerRegistry,
        read_backlog: BacklogReader,
        *,
        pool_stats: PoolStats | None = None,
        gateway: Connected | None = None,
        ttl: float = 5.0,
        timeout: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.breakers = breakers
        self.read_backlog = read_backlog
        self.pool_stats = pool_stats
        self.gateway = gateway
        self.ttl = ttl
        self.timeout = timeout
        self._clock = clock
        self._due = 0.0
        self._alert_labels: set[tuple[str, str]] = set()

    async def refresh(self) -> None:
        circuits = set_circuits(self.breakers)
        if self.gateway is not None:
            metrics.MQTT_CONNECTED.set(1 if self.gateway.connected else 0)
        if self.pool_stats is not None:
            set_pool(self.pool_stats())  # before the scrape takes a connection of its own
        now = self._clock()
        if now < self._due or circuits[LEDGER_CIRCUIT] is not State.CLOSED:
            return
        self._due = now + self.ttl  # set first: concurrent scrapes do not query again
        try:
            async with asyncio.timeout(self.timeout):
                read = await self.read_backlog()
        except Exception as exc:  # a scrape must answer whatever the database does
            log.warning("metrics.database_unavailable", error=str(exc) or type(exc).__name__)
            return
        counts = dict.fromkeys(DLQ_STATUSES, 0) | dict(read.retry_depth)
        for status, n in counts.items():
            DLQ_DEPTH.labels(DLQ_QUEUE, status).set(n)
        if read.backlog is not None:
            set_backlog(read.backlog)
        self._set_alerts(read.alerts)

    def _set_alerts(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Open alerts by (code, severity); a pair no longer open reads 0 and loses its
        last-raised time, so an alert on that time resolves."""
        now_open = {(row["code"], row["severity"]): row for row in rows}
        for labels in self._alert_labels - now_open.keys():
            metrics.OPS_ALERTS_OPEN.labels(*labels).set(0)
            with contextlib.suppress(KeyError):
                metrics.OPS_ALERTS_LAST_RAISED.remove(*labels)
        for labels, row in now_open.items():
            metrics.OPS_ALERTS_OPEN.labels(*labels).set(row["n"])
            metrics.OPS_ALERTS_LAST_RAISED.labels(*labels).set(row["last_at"])
        self._alert_labels |= now_open.keys()
