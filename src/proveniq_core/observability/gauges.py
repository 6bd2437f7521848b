"""The gauges that are read rather than counted, refreshed when ``/metrics`` is scraped.

Circuit states are read from the breakers at scrape time rather than pushed on each
transition: an open breaker turns half-open only when its state is next read, so a pushed
gauge would say ``open`` long after the breaker stopped refusing calls.

The broker connection and the pool's use are this process's own, read at every scrape.

The retry queue's depth, the backlogs an operator is paged on (due sagas, pending reviews,
unsealed audit rows, webhook endpoints) and the open ops alerts come from the database, at
most once per ``ttl`` seconds and within ``timeout`` seconds, straight from the pool: a
scrape is not a call through the ledger circuit, so observing never opens, probes or closes
it. While that circuit is not closed, or when the database does not answer in time, the last
values stay and ``/metrics`` still answers: the ledger circuit's own gauge says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Final, Protocol

import structlog

from proveniq_core import db
from proveniq_core.locker.gateway import FLEET_CIRCUIT
from proveniq_core.observability import metrics
from proveniq_core.observability.metrics import (
    CIRCUIT_STATE,
    CIRCUIT_STATES,
    DLQ_DEPTH,
    DLQ_STATUSES,
    OPEN_DEVICES,
)
from proveniq_core.resilience.breaker import BreakerRegistry, State

log = structlog.get_logger(__name__)

DLQ_QUEUE: Final = "locker_link"
"""The ``queue`` label of the retry queue's entries (deferred locker links)."""


def set_circuits(breakers: BreakerRegistry) -> dict[str, State]:
    """Set ``core_circuit_breaker_state`` for the named circuits (``ledger``, ``locker``, …;
    one not created yet is closed) and count the per-device ones (``locker:<ref>``).
    Returns the named circuits' states."""
    states = {db.LEDGER_CIRCUIT: State.CLOSED, FLEET_CIRCUIT: State.CLOSED}
    devices = 0
    for breaker in breakers:
        state = breaker.state
        if ":" not in breaker.name:
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


def set_pool(pool: db.Pool) -> None:
    """Set the pool gauges from the pool's own counts (no connection is taken)."""
    stats = pool.get_stats()
    size, available = stats.get("pool_size", 0), stats.get("pool_available", 0)
    metrics.DB_POOL_IN_USE.set(max(size - available, 0))
    metrics.DB_POOL_MAX.set(stats.get("pool_max", pool.max_size))
    metrics.DB_POOL_WAITING.set(stats.get("requests_waiting", 0))


def set_backlog(row: db.Row) -> None:
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
        pool: db.Pool,
        *,
        gateway: Connected | None = None,
        ttl: float = 5.0,
        timeout: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.breakers = breakers
        self.pool = pool
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
        set_pool(self.pool)  # before the scrape takes a connection of its own
        now = self._clock()
        if now < self._due or circuits[db.LEDGER_CIRCUIT] is not State.CLOSED:
            return
        self._due = now + self.ttl  # set first: concurrent scrapes do not query again
        try:
            async with asyncio.timeout(self.timeout), self.pool.connection() as conn:
                rows = await db.fetch_all(conn, "count_open_retry_entries")
                backlog = await db.fetch_one(conn, "scrape_backlog")
                alerts = await db.fetch_all(conn, "count_open_alerts")
        except Exception as exc:  # a scrape must answer whatever the database does
            log.warning("metrics.database_unavailable", error=str(exc) or type(exc).__name__)
            return
        counts = dict.fromkeys(DLQ_STATUSES, 0) | {row["status"]: row["n"] for row in rows}
        for status, n in counts.items():
            DLQ_DEPTH.labels(DLQ_QUEUE, status).set(n)
        if backlog is not None:
            set_backlog(backlog)
        self._set_alerts(alerts)

    def _set_alerts(self, rows: list[db.Row]) -> None:
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
