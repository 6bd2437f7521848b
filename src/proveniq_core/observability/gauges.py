"""The gauges that are read rather than counted, refreshed when ``/metrics`` is scraped.

Circuit states are read from the breakers at scrape time rather than pushed on each
transition: an open breaker turns half-open only when its state is next read, so a pushed
gauge would say ``open`` long after the breaker stopped refusing calls.

The retry queue's depth is read through ``RetryDepth``, a reader the composition root
supplies (``service``), at most once per ``ttl`` seconds and within ``timeout`` seconds. While
the ledger circuit is not closed, or when the reader does not answer in time, the last values
stay and ``/metrics`` still answers: the ledger circuit's own gauge says why.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

import structlog

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

RetryDepth = Callable[[], Awaitable[Mapping[str, int]]]
"""Counts the retry queue's open entries by status (``{"pending": 2, "exhausted": 1}``)."""


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


class ScrapeGauges:
    """Refreshes the read gauges of one running Core."""

    def __init__(
        self,
        breakers: BreakerRegistry,
        retry_depth: RetryDepth,
        *,
        ttl: float = 5.0,
        timeout: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.breakers = breakers
        self.retry_depth = retry_depth
        self.ttl = ttl
        self.timeout = timeout
        self._clock = clock
        self._due = 0.0

    async def refresh(self) -> None:
        circuits = set_circuits(self.breakers)
        now = self._clock()
        if now < self._due or circuits[LEDGER_CIRCUIT] is not State.CLOSED:
            return
        self._due = now + self.ttl  # set first: concurrent scrapes do not query again
        try:
            async with asyncio.timeout(self.timeout):
                depth = await self.retry_depth()
        except Exception as exc:  # a scrape must answer whatever the database does
            log.warning("metrics.dlq_depth_unavailable", error=str(exc) or type(exc).__name__)
            return
        counts = dict.fromkeys(DLQ_STATUSES, 0) | dict(depth)
        for status, n in counts.items():
            DLQ_DEPTH.labels(DLQ_QUEUE, status).set(n)
