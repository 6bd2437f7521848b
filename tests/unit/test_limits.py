"""Token buckets and the rate limiter's arithmetic on a fake clock (no I/O)."""

from __future__ import annotations

from proveniq_core.api.limits import RateLimiter, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_refills_at_its_rate() -> None:
    """A burst of 3 passes, the 4th waits 1/rate; after that long one more passes."""
    bucket = TokenBucket(rate=2.0, burst=3.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == 0.5
    assert bucket.take(0.5) == 0.0
    assert bucket.take(10.0) == 0.0 and bucket.tokens == 2.0  # never more than the burst


def test_each_client_has_its_own_bucket_and_rate_zero_is_no_limit() -> None:
    """One address running dry leaves another's bucket full; rate 0 never refuses."""
    clock = Clock()
    limiter = RateLimiter(1.0, burst_seconds=2.0, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 1.0]
    assert limiter.take("b") == 0.0
    assert limiter.wait("a") == 1.0 and limiter.wait("a") == 1.0  # wait counts nothing
    clock.now = 1.0
    assert limiter.take("a") == 0.0
    unlimited = RateLimiter(0.0, burst_seconds=2.0, clock=clock)
    assert all(unlimited.take("a") == 0.0 for _ in range(1000))


def test_the_burst_is_at_least_one_request() -> None:
    """A rate below one a second still lets one request through."""
    limiter = RateLimiter(0.1, burst_seconds=1.0, clock=Clock())
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0
