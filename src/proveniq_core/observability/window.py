"""The last hour of a histogram: cumulative buckets sampled once a minute, subtracted.

Prometheus answers "P99 over the last hour" with ``rate(...[1h])``; a process without one
keeps a minute-by-minute ring of its own cumulative buckets and subtracts the sample of an
hour ago from now. Until the process has run an hour, the window is its whole life (the
answer says how long it covers).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from proveniq_core.observability import metrics, slo

Buckets = list[tuple[float, float]]


class BucketWindow:
    """Samples of ``read()`` (cumulative buckets), one per ``step`` seconds, over ``span``."""

    def __init__(
        self,
        read: Callable[[], Buckets],
        *,
        span: float = 3600.0,
        step: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.span, self.step = span, step
        self._read, self._clock = read, clock
        self._samples: deque[tuple[float, Buckets]] = deque()

    def sample(self) -> None:
        """Record the buckets now, unless the last sample is younger than ``step``."""
        now = self._clock()
        if self._samples and now - self._samples[-1][0] < self.step:
            return
        self._samples.append((now, self._read()))
        # Keep one sample at or before the window's start: it is what "an hour ago" subtracts.
        while len(self._samples) > 1 and self._samples[1][0] <= now - self.span:
            self._samples.popleft()

    def recent(self) -> tuple[Buckets, float]:
        """The buckets observed within the window, and the seconds the window covers."""
        now, current = self._clock(), self._read()
        if not self._samples:
            return current, 0.0
        start, base = self._samples[0]
        for at, buckets in self._samples:
            if at <= now - self.span:
                start, base = at, buckets
        return _minus(current, base), now - start

    def per_step(self) -> list[float]:
        """Observations in each ``step`` of the window, oldest first (the last one partial)."""
        totals = [(b[-1][1] if b else 0.0) for _, b in self._samples]
        current = self._read()
        totals.append(current[-1][1] if current else 0.0)
        return [max(0.0, b - a) for a, b in itertools.pairwise(totals)]

    async def sample_forever(self) -> None:
        """Sample every ``step`` seconds until cancelled."""
        while True:
            self.sample()
            await asyncio.sleep(self.step)


def _minus(current: Buckets, base: Buckets) -> Buckets:
    before = dict(base)
    return [(le, count - before.get(le, 0.0)) for le, count in current]


REGISTRATIONS: Final = BucketWindow(
    lambda: slo.buckets(metrics.LATENCY, subsystem="api", operation=slo.SLO_OPERATION)
)
"""``POST /api/assets`` latency over the last hour, as this process served it."""
