"""The last hour of a histogram: minute samples of cumulative buckets, subtracted."""

from __future__ import annotations

from proveniq_core.observability import slo
from proveniq_core.observability.window import BucketWindow


class Histogram:
    """Cumulative buckets (0.5 s, 1.5 s, +Inf) a test fills, and a clock it moves."""

    def __init__(self) -> None:
        self.counts = [0.0, 0.0, 0.0]
        self.now = 0.0

    def observe(self, seconds: float, n: int = 1) -> None:
        for i, le in enumerate((0.5, 1.5, float("inf"))):
            if seconds <= le:
                self.counts[i] += n

    def read(self) -> list[tuple[float, float]]:
        return list(zip((0.5, 1.5, float("inf")), self.counts, strict=True))


def test_the_window_forgets_what_is_older_than_an_hour() -> None:
    """Slow requests 70 minutes ago no longer count: P99 comes from the last hour only."""
    h = Histogram()
    window = BucketWindow(h.read, clock=lambda: h.now)
    window.sample()
    h.observe(1.4, 100)  # slow, long ago
    for _ in range(70):
        h.now += 60
        window.sample()
    h.observe(0.2, 100)  # fast, just now
    recent, covered = window.recent()
    assert covered == 3600
    assert recent[-1][1] == 100
    p99 = slo.quantile(0.99, recent)
    assert p99 is not None and p99 <= 0.5
    whole = slo.quantile(0.99, h.read())
    assert whole is not None and whole > 0.5


def test_before_an_hour_the_window_is_the_whole_life() -> None:
    """Ten minutes in, the window covers ten minutes and every observation."""
    h = Histogram()
    window = BucketWindow(h.read, clock=lambda: h.now)
    window.sample()
    h.observe(1.0, 3)
    h.now += 600
    recent, covered = window.recent()
    assert (covered, recent[-1][1]) == (600, 3)


def test_per_step_counts_each_minute() -> None:
    """Observations per minute, oldest first, the current minute last."""
    h = Histogram()
    window = BucketWindow(h.read, clock=lambda: h.now)
    window.sample()
    for n in (2, 0, 5):
        h.observe(0.1, n)
        h.now += 60
        window.sample()
    h.observe(0.1, 1)
    assert window.per_step() == [2, 0, 5, 1]
