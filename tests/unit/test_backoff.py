"""The one backoff formula: exponential, capped, jittered from an injectable source; and the
numbers each caller documented before it shared the formula."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proveniq_core.config import Settings
from proveniq_core.locker.gateway import BACKOFF_MAX_S, BACKOFF_MIN_S, RECONNECT
from proveniq_core.resilience.backoff import Backoff, Jitter, stretch
from proveniq_core.saga.retry_queue import RetryPolicy
from proveniq_core.verify.worker import retry_delay
from proveniq_core.webhooks.delivery import JITTER, SCHEDULE, Attempt, decide


def test_delays_grow_by_the_factor_from_the_base() -> None:
    """Retry n waits base * factor**n: 1, 3, 9, 27 with base 1 and factor 3."""
    assert [Backoff(1.0, factor=3.0).delay(n) for n in range(4)] == [1.0, 3.0, 9.0, 27.0]


def test_the_default_factor_doubles() -> None:
    """Without a factor, each delay is twice the one before."""
    assert [Backoff(0.5).delay(n) for n in range(4)] == [0.5, 1.0, 2.0, 4.0]


def test_delays_stop_growing_at_the_cap() -> None:
    """A capped backoff reaches its cap and stays there, however many retries follow."""
    backoff = Backoff(1.0, cap=5.0)
    assert [backoff.delay(n) for n in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert backoff.delay(100_000) == 5.0  # no overflow far past the cap


def test_an_uncapped_delay_far_out_is_infinite_not_an_error() -> None:
    """A retry count whose power overflows a float gives an infinite delay (or 0 from 0)."""
    assert Backoff(1.0).delay(5000) == math.inf
    assert Backoff(0.0).delay(5000) == 0.0


def test_full_jitter_draws_anywhere_below_the_delay() -> None:
    """Full jitter scales the delay by the draw: 0 at the bottom, the delay at the top."""
    assert Backoff(4.0, jitter=Jitter.FULL, rand=lambda: 0.0).delay(1) == 0.0
    assert Backoff(4.0, jitter=Jitter.FULL, rand=lambda: 0.25).delay(1) == 2.0


def test_equal_jitter_keeps_half_the_delay() -> None:
    """Equal jitter waits at least half the delay, and half again at the top of the draw."""
    assert Backoff(4.0, jitter=Jitter.EQUAL, rand=lambda: 0.0).delay(1) == 4.0
    assert Backoff(4.0, jitter=Jitter.EQUAL, rand=lambda: 0.5).delay(1) == 6.0


@settings(deadline=None)
@given(
    base=st.floats(0.0, 1e3),
    factor=st.floats(1.0, 10.0),
    cap=st.floats(0.0, 1e6),
    retry=st.integers(0, 2000),
    draw=st.floats(0.0, 1.0, exclude_max=True),
)
def test_jitter_stays_within_the_unjittered_delay(
    base: float, factor: float, cap: float, retry: int, draw: float
) -> None:
    """For any parameters the delay is within [0, cap], a fully jittered one within
    [0, delay] and an equally jittered one within [delay / 2, delay]."""
    plain = Backoff(base, factor, cap).delay(retry)
    full = Backoff(base, factor, cap, Jitter.FULL, lambda: draw).delay(retry)
    equal = Backoff(base, factor, cap, Jitter.EQUAL, lambda: draw).delay(retry)
    assert 0.0 <= plain <= cap
    assert 0.0 <= full <= plain
    assert plain / 2 <= equal <= plain


@pytest.mark.parametrize(
    ("base", "factor", "cap", "retry"),
    [(-1.0, 2.0, 1.0, 0), (1.0, 0.5, 1.0, 0), (1.0, 2.0, -1.0, 0), (1.0, 2.0, 1.0, -1)],
)
def test_nonsense_is_refused(base: float, factor: float, cap: float, retry: int) -> None:
    """A negative base or cap, a shrinking factor or a negative retry count is an error."""
    with pytest.raises(ValueError, match=r"backoff|retry"):
        Backoff(base, factor, cap).delay(retry)


def test_stretch_lengthens_by_up_to_the_fraction_never_shortens() -> None:
    """Stretching by 20 % keeps the delay at the bottom of the draw and adds 10 % midway."""
    assert stretch(100.0, 0.2, lambda: 0.0) == 100.0
    assert stretch(100.0, 0.2, lambda: 0.5) == pytest.approx(110.0)


# -- the callers' numbers, as the README and their docstrings state them ----------------------


def test_deferred_links_retry_from_300_s_doubling() -> None:
    """PROVENIQ_RETRY_BASE: 300 s, doubling (README)."""
    assert [RetryPolicy().delay(n) for n in range(4)] == [300.0, 600.0, 1200.0, 2400.0]


def test_verification_retries_from_30_s_doubling() -> None:
    """A failed collection is retried from 30 s, doubling (README)."""
    settings = Settings()
    assert settings.verify_retry_base == 30.0
    assert [retry_delay(settings, attempt) for attempt in (1, 2, 3)] == [30.0, 60.0, 120.0]


def test_the_broker_is_redialled_from_0_2_s_doubling_up_to_5_s() -> None:
    """The gateway's reconnect waits: 0.2, 0.4, 0.8, 1.6, 3.2, then 5 s for good."""
    waits = [RECONNECT.delay(n) for n in range(7)]
    assert waits == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert (waits[0], waits[-1]) == (BACKOFF_MIN_S, BACKOFF_MAX_S)


def test_webhook_retries_follow_the_schedule_plus_up_to_20_percent() -> None:
    """Each webhook retry waits its scheduled delay, stretched by 0 to 20 % (README)."""
    failed = Attempt(datetime.now(UTC), 1.0, 500, "HTTP 500")
    assert JITTER == 0.2
    for attempt, scheduled in enumerate(SCHEDULE, start=1):
        assert decide(attempt, failed, rand=lambda: 0.0).delay == scheduled
        assert decide(attempt, failed, rand=lambda: 0.5).delay == pytest.approx(scheduled * 1.1)
