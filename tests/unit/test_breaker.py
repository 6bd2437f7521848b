"""Circuit breakers: every transition, the counting rules, and invariants over random runs."""

from __future__ import annotations

import asyncio
from dataclasses import FrozenInstanceError

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
)

from proveniq_core.resilience.breaker import (
    LEDGER,
    LOCKER,
    BreakerConfig,
    BreakerRegistry,
    CircuitBreaker,
    CircuitOpenError,
    Permit,
    State,
)


class NetworkError(Exception):
    """Stands for a transport failure: counts against the breaker."""


class ValidationError(Exception):
    """Stands for a rejected request: says nothing about the dependency."""


def is_network(exc: Exception) -> bool:
    return isinstance(exc, NetworkError)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# F=3 failures, S=2 successes, 10 s open, V=5 calls, 60 s window.
CONFIG = LEDGER.with_filter(is_network)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker("ledger", CONFIG, clock=clock)


def succeed(breaker: CircuitBreaker, n: int = 1) -> None:
    for _ in range(n):
        breaker.acquire().record_success()


def fail(breaker: CircuitBreaker, n: int = 1, exc: Exception | None = None) -> None:
    for _ in range(n):
        breaker.acquire().record_failure(exc or NetworkError("down"))


def trip(breaker: CircuitBreaker) -> None:
    fail(breaker, CONFIG.volume_threshold)
    assert breaker.state is State.OPEN


def refused(breaker: CircuitBreaker) -> CircuitOpenError:
    with pytest.raises(CircuitOpenError) as info:
        breaker.acquire()
    return info.value


# -- configuration -----------------------------------------------------------------------


def test_presets_match_the_seed() -> None:
    """LOCKER is 5/3/30 s/10 and LEDGER 3/2/10 s/5, both over a 60 s window."""
    assert (LOCKER.failure_threshold, LOCKER.success_threshold) == (5, 3)
    assert (LOCKER.timeout, LOCKER.volume_threshold, LOCKER.window) == (30.0, 10, 60.0)
    assert (LEDGER.failure_threshold, LEDGER.success_threshold) == (3, 2)
    assert (LEDGER.timeout, LEDGER.volume_threshold, LEDGER.window) == (10.0, 5, 60.0)


def test_with_filter_replaces_only_the_filter() -> None:
    """with_filter keeps the thresholds and leaves the preset itself untouched."""
    config = LOCKER.with_filter(is_network)
    assert config.counts is is_network
    assert config.failure_threshold == LOCKER.failure_threshold
    assert LOCKER.counts(ValidationError()) is True
    with pytest.raises(FrozenInstanceError):
        LOCKER.timeout = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "bad",
    [
        {"failure_threshold": 0},
        {"success_threshold": 0},
        {"volume_threshold": 0},
        {"timeout": 0.0},
        {"window": -1.0},
    ],
)
def test_config_rejects_meaningless_values(bad: dict[str, float]) -> None:
    """Zero thresholds and non-positive durations are refused at construction."""
    fields: dict[str, float] = {
        "failure_threshold": 1,
        "success_threshold": 1,
        "timeout": 1.0,
        "volume_threshold": 1,
    }
    with pytest.raises(ValueError, match=next(iter(bad))):
        BreakerConfig(**{**fields, **bad})  # type: ignore[arg-type]


# -- closed → open -----------------------------------------------------------------------


def test_closed_lets_calls_through(breaker: CircuitBreaker) -> None:
    """A fresh breaker is closed and admits calls, which are not probes."""
    assert breaker.state is State.CLOSED
    permit = breaker.acquire()
    assert not permit.is_probe
    permit.record_success()
    assert breaker.snapshot()["calls_in_window"] == 1


def test_opens_at_failure_threshold_once_volume_is_reached(breaker: CircuitBreaker) -> None:
    """2 successes + 3 failures = 5 calls: the third failure opens the breaker."""
    succeed(breaker, 2)
    fail(breaker, 2)
    assert breaker.state is State.CLOSED
    fail(breaker)
    assert breaker.state is State.OPEN


def test_does_not_open_below_volume_threshold(breaker: CircuitBreaker) -> None:
    """4 failures are above the failure threshold but below the volume: still closed."""
    fail(breaker, 4)
    assert breaker.state is State.CLOSED
    fail(breaker)
    assert breaker.state is State.OPEN


def test_a_success_never_opens_the_breaker(breaker: CircuitBreaker) -> None:
    """3 failures then 2 successes fill both thresholds, yet only the next failure opens it."""
    fail(breaker, 3)
    succeed(breaker, 2)
    assert breaker.state is State.CLOSED
    fail(breaker)
    assert breaker.state is State.OPEN


def test_failures_older_than_the_window_are_forgotten(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """Calls age out after `window` seconds, so old failures cannot combine with new ones."""
    fail(breaker, 4)
    clock.advance(60.0)
    fail(breaker)
    assert breaker.state is State.CLOSED
    assert breaker.snapshot()["calls_in_window"] == 1
    clock.advance(59.0)
    fail(breaker, 4)
    assert breaker.state is State.OPEN


def test_filtered_errors_never_count(breaker: CircuitBreaker) -> None:
    """Validation errors are neither failures nor calls: no number of them trips the breaker."""
    fail(breaker, 100, exc=ValidationError("bad input"))
    assert breaker.state is State.CLOSED
    snap = breaker.snapshot()
    assert (snap["calls_in_window"], snap["failures"]) == (0, 0)
    fail(breaker, 4)
    fail(breaker, 10, exc=ValidationError("bad input"))
    assert breaker.state is State.CLOSED


def test_every_exception_counts_without_a_filter(clock: FakeClock) -> None:
    """The presets as they are count every exception; the filter is the caller's to give."""
    breaker = CircuitBreaker("bare", LEDGER, clock=clock)
    fail(breaker, 5, exc=ValidationError("bad input"))
    assert breaker.state is State.OPEN


# -- open ------------------------------------------------------------------------------


def test_open_refuses_every_call_until_timeout(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """While open, calls fail fast with the seconds left until a probe may go."""
    trip(breaker)
    clock.advance(4.0)
    err = refused(breaker)
    assert (err.name, err.retry_after) == ("ledger", 6.0)
    assert "ledger" in str(err)
    assert breaker.retry_after == 6.0
    clock.advance(5.999)
    assert breaker.state is State.OPEN
    refused(breaker)


def test_open_turns_half_open_when_timeout_passes(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """The state property itself notices the elapsed timeout."""
    trip(breaker)
    clock.advance(10.0)
    assert breaker.state is State.HALF_OPEN
    assert breaker.retry_after == 0.0


# -- half-open -------------------------------------------------------------------------


def test_half_open_admits_one_probe_at_a_time(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """While a probe is in flight, other calls are refused at once; then the next may probe."""
    trip(breaker)
    clock.advance(10.0)
    probe = breaker.acquire()
    assert probe.is_probe
    assert breaker.snapshot()["probe_in_flight"]
    assert refused(breaker).retry_after == 0.0
    probe.record_success()
    assert breaker.state is State.HALF_OPEN
    assert breaker.acquire().is_probe


def test_success_threshold_probes_close_the_breaker(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """Two successful probes in a row close the ledger breaker with an empty window."""
    trip(breaker)
    clock.advance(10.0)
    succeed(breaker)
    assert breaker.state is State.HALF_OPEN
    assert breaker.snapshot()["successes"] == 1
    succeed(breaker)
    assert breaker.state is State.CLOSED
    snap = breaker.snapshot()
    assert (snap["calls_in_window"], snap["opened_at"]) == (0, None)


def test_failed_probe_reopens_with_a_fresh_timeout(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """A failing probe opens the breaker again for a whole timeout, dropping earlier successes."""
    trip(breaker)
    clock.advance(10.0)
    succeed(breaker)
    fail(breaker)
    assert breaker.state is State.OPEN
    assert breaker.snapshot()["opened_at"] == clock.now
    assert refused(breaker).retry_after == 10.0
    clock.advance(10.0)
    succeed(breaker)
    assert breaker.state is State.HALF_OPEN


def test_filtered_or_cancelled_probe_frees_the_slot(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """A probe that proves nothing leaves the breaker half-open and lets the next call probe."""
    trip(breaker)
    clock.advance(10.0)
    breaker.acquire().record_failure(ValidationError("bad input"))
    breaker.acquire().release()
    assert breaker.state is State.HALF_OPEN
    assert breaker.snapshot()["successes"] == 0
    assert breaker.acquire().is_probe


def test_result_of_a_call_admitted_before_opening_is_dropped(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """A slow call from the closed state cannot pass for the probe's result."""
    slow = breaker.acquire()
    trip(breaker)
    clock.advance(10.0)
    probe = breaker.acquire()
    slow.record_success()
    assert breaker.snapshot()["successes"] == 0
    refused(breaker)  # the probe is still in flight
    probe.record_failure(NetworkError("down"))
    assert breaker.state is State.OPEN


def test_a_filter_that_raises_still_frees_the_probe(clock: FakeClock) -> None:
    """A broken error filter propagates its error but does not wedge the half-open breaker."""

    def picky(exc: Exception) -> bool:
        if isinstance(exc, NetworkError):
            return True
        raise KeyError("unexpected exception type")

    breaker = CircuitBreaker("picky", LEDGER.with_filter(picky), clock=clock)
    trip(breaker)
    clock.advance(10.0)
    probe = breaker.acquire()
    with pytest.raises(KeyError):
        probe.record_failure(ValidationError())
    assert breaker.state is State.HALF_OPEN
    assert breaker.acquire().is_probe


def test_permit_settles_once(breaker: CircuitBreaker) -> None:
    """Reporting a second outcome for one call is a bug and says so."""
    permit = breaker.acquire()
    permit.record_success()
    with pytest.raises(RuntimeError, match="already settled"):
        permit.record_failure(NetworkError())


# -- context manager and call() ----------------------------------------------------------


def test_context_manager_reports_the_outcome(breaker: CircuitBreaker) -> None:
    """Normal exit is a success, an escaping error a failure, an explicit record wins."""
    with breaker.acquire():
        pass
    with pytest.raises(NetworkError), breaker.acquire():
        raise NetworkError
    with breaker.acquire() as permit:
        permit.record_failure(NetworkError())
    snap = breaker.snapshot()
    assert (snap["calls_in_window"], snap["failures"]) == (3, 2)


async def test_call_wraps_a_coroutine(breaker: CircuitBreaker) -> None:
    """call() returns the result, re-raises errors after counting them, and fails fast."""

    async def ok(x: int, *, y: int) -> int:
        return x + y

    async def down() -> None:
        raise NetworkError

    assert await breaker.call(ok, 1, y=2) == 3
    for _ in range(4):  # 1 success + 4 failures reach the volume of 5
        with pytest.raises(NetworkError):
            await breaker.call(down)
    assert breaker.state is State.OPEN
    calls = 0

    async def counted() -> None:
        nonlocal calls
        calls += 1

    with pytest.raises(CircuitOpenError):
        await breaker.call(counted)
    assert calls == 0


async def test_cancelled_probe_frees_the_slot(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """A probe task cancelled mid-call counts as nothing and another call may probe."""
    trip(breaker)
    clock.advance(10.0)
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(breaker.call(hang))
    await started.wait()
    assert breaker.snapshot()["probe_in_flight"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state is State.HALF_OPEN
    assert breaker.acquire().is_probe


async def test_timeout_inside_the_guard_counts() -> None:
    """A timeout set inside the guarded block reaches the breaker as TimeoutError."""
    breaker = CircuitBreaker("t", LEDGER.with_filter(lambda e: isinstance(e, TimeoutError)))

    async def slow() -> None:
        async with asyncio.timeout(0):
            await asyncio.sleep(1)

    with pytest.raises(TimeoutError):
        await breaker.call(slow)
    assert breaker.snapshot()["failures"] == 1


# -- reset, listeners, snapshot ----------------------------------------------------------


def test_reset_closes_and_forgets(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """reset() closes an open breaker, empties the window and drops calls in flight."""
    in_flight = breaker.acquire()
    fail(breaker, 4)
    breaker.reset()
    in_flight.record_failure(NetworkError())
    assert breaker.snapshot()["calls_in_window"] == 0
    trip(breaker)
    clock.advance(1.0)
    breaker.reset()
    assert breaker.state is State.CLOSED
    assert breaker.snapshot()["opened_at"] is None
    assert not breaker.acquire().is_probe


def test_listeners_see_every_transition_in_order(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """on_change reports (name, old, new) for each transition, and only real changes."""
    seen: list[tuple[str, State, State]] = []
    breaker.on_change(lambda *change: seen.append(change))
    breaker.reset()  # closed → closed is no transition
    trip(breaker)
    clock.advance(10.0)
    fail(breaker)
    clock.advance(10.0)
    succeed(breaker, 2)
    trip(breaker)
    breaker.reset()
    c, o, h = State.CLOSED, State.OPEN, State.HALF_OPEN
    assert seen == [
        ("ledger", c, o),
        ("ledger", o, h),
        ("ledger", h, o),
        ("ledger", o, h),
        ("ledger", h, c),
        ("ledger", c, o),
        ("ledger", o, c),
    ]


def test_unsubscribed_and_failing_listeners(breaker: CircuitBreaker) -> None:
    """An unsubscribed listener hears nothing; a raising one does not stop the others."""
    seen: list[State] = []

    def broken(name: str, old: State, new: State) -> None:
        raise RuntimeError("metrics down")

    unsubscribe = breaker.on_change(lambda n, o, new: seen.append(new))
    breaker.on_change(broken)
    late: list[State] = []
    breaker.on_change(lambda n, o, new: late.append(new))
    trip(breaker)
    unsubscribe()
    breaker.reset()
    assert breaker.state is State.CLOSED
    assert seen == [State.OPEN]
    assert late == [State.OPEN, State.CLOSED]


def test_snapshot_describes_the_breaker(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """snapshot() gives the ops API the state, window counts, open time and retry delay."""
    succeed(breaker, 2)
    fail(breaker)
    assert breaker.snapshot() == {
        "name": "ledger",
        "state": "closed",
        "calls_in_window": 3,
        "failures": 1,
        "successes": 2,
        "probe_in_flight": False,
        "opened_at": None,
        "retry_after": 0.0,
    }
    fail(breaker, 2)
    opened_at = clock.now
    clock.advance(3.0)
    snap = breaker.snapshot()
    assert (snap["state"], snap["calls_in_window"], snap["failures"]) == ("open", 0, 0)
    assert (snap["opened_at"], snap["retry_after"]) == (opened_at, 7.0)


# -- registry --------------------------------------------------------------------------


def test_registry_creates_breakers_lazily_once(clock: FakeClock) -> None:
    """get() creates a breaker on first use and returns the same one afterwards."""
    registry = BreakerRegistry(clock=clock)
    locker = LOCKER.with_filter(is_network)
    assert "locker:locker-003" not in registry
    first = registry.get("locker:locker-003", locker)
    assert registry.get("locker:locker-003", locker) is first
    assert registry["locker:locker-003"] is first
    assert len(registry) == 1
    with pytest.raises(KeyError):
        registry["nope"]


def test_registry_refuses_a_second_config_for_one_name(clock: FakeClock) -> None:
    """One name, one policy: asking for it with another config is an error."""
    registry = BreakerRegistry(clock=clock)
    registry.get("ledger", CONFIG)
    with pytest.raises(ValueError, match="another config"):
        registry.get("ledger", LOCKER)


def test_registry_lists_in_name_order_and_forwards_transitions(clock: FakeClock) -> None:
    """Snapshots come sorted by name; registry listeners hear breakers created later."""
    registry = BreakerRegistry(clock=clock)
    seen: list[tuple[str, State, State]] = []
    registry.on_change(lambda *change: seen.append(change))
    registry.get("locker:b", LOCKER)
    ledger = registry.get("ledger", CONFIG)
    registry.get("locker:a", LOCKER)
    trip(ledger)
    assert [s["name"] for s in registry.snapshots()] == ["ledger", "locker:a", "locker:b"]
    assert [s["state"] for s in registry.snapshots()] == ["open", "closed", "closed"]
    assert seen == [("ledger", State.CLOSED, State.OPEN)]
    ledger.reset()
    assert registry.get("ledger", CONFIG).state is State.CLOSED


# -- properties over random runs ---------------------------------------------------------


class Held:
    """A permit the machine holds, with what the machine knew when it was admitted."""

    def __init__(self, permit: Permit, stretch: int, probe: bool, resets: int) -> None:
        self.permit, self.stretch, self.probe, self.resets = permit, stretch, probe, resets


class BreakerMachine(RuleBasedStateMachine):
    """Random calls, outcomes, filtered errors, resets and clock moves keep the invariants."""

    held = Bundle("held")

    @initialize(
        failures=st.integers(1, 4),
        successes=st.integers(1, 3),
        timeout=st.sampled_from([1.0, 5.0, 10.0]),
        volume=st.integers(1, 6),
        window=st.sampled_from([5.0, 20.0, 60.0]),
    )
    def setup(
        self, failures: int, successes: int, timeout: float, volume: int, window: float
    ) -> None:
        self.clock = FakeClock()
        self.config = BreakerConfig(failures, successes, timeout, volume, window, is_network)
        self.breaker = CircuitBreaker("prop", self.config, clock=self.clock)
        self.breaker.on_change(self.on_change)
        self.seen = State.CLOSED  # the state as reported by the listener
        self.opened_at = 0.0
        self.stretch = 0  # bumped whenever the breaker (re)enters closed
        self.outcomes: list[tuple[float, bool]] = []  # (time, failed) in this closed stretch
        self.probes_out = 0  # probes admitted since the last reset and not yet settled
        self.probe_successes = 0
        self.resets = 0
        self.transitions: list[tuple[State, State]] = []
        self.listener_errors: list[AssertionError] = []

    def on_change(self, name: str, old: State, new: State) -> None:
        # The breaker logs and swallows a listener's exceptions: keep them for check_listener.
        try:
            self.follow(old, new)
        except AssertionError as err:
            self.listener_errors.append(err)

    def follow(self, old: State, new: State) -> None:
        assert old is self.seen
        now = self.clock.now
        if new is State.OPEN and old is State.CLOSED:
            calls, failed = self.window()
            assert calls >= self.config.volume_threshold, "opened below the volume threshold"
            assert failed >= self.config.failure_threshold
        if old is State.OPEN and new is State.HALF_OPEN:
            assert now >= self.opened_at + self.config.timeout
        if new is State.OPEN:
            self.opened_at = now
        if new is State.HALF_OPEN:
            self.probe_successes = 0
        if new is State.CLOSED:
            self.stretch += 1
            self.outcomes = []
        self.seen = new
        self.transitions.append((old, new))

    def window(self) -> tuple[int, int]:
        horizon = self.clock.now - self.config.window
        recent = [failed for t, failed in self.outcomes if t > horizon]
        return len(recent), sum(recent)

    def counted_in_closed(self, held: Held) -> bool:
        return not held.probe and held.stretch == self.stretch and self.seen is State.CLOSED

    @rule(seconds=st.integers(0, 100).map(lambda n: n / 4))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(target=held)
    def acquire(self) -> object:
        open_until = self.opened_at + self.config.timeout
        if self.seen is State.OPEN and self.clock.now < open_until:
            # Open and before the timeout: every call is refused.
            assert refused(self.breaker).retry_after == open_until - self.clock.now
            return multiple()
        if self.seen is State.HALF_OPEN and self.probes_out:
            # Never a second probe while one is in flight.
            assert refused(self.breaker).retry_after == 0.0
            return multiple()
        permit = self.breaker.acquire()  # anything else is admitted
        probe = self.seen is State.HALF_OPEN  # acquire() may just have turned it half-open
        assert permit.is_probe == probe
        self.probes_out += probe
        return Held(permit, self.stretch, probe, self.resets)

    def settle_probe(self, held: Held) -> None:
        if held.resets == self.resets:
            self.probes_out -= 1

    @rule(held=consumes(held))
    def succeed(self, held: Held) -> None:
        before = self.seen
        if self.counted_in_closed(held):
            self.outcomes.append((self.clock.now, False))
        live_probe = held.probe and held.resets == self.resets and before is State.HALF_OPEN
        if live_probe:
            self.probe_successes += 1
        self.transitions = []
        held.permit.record_success()
        if held.probe:
            self.settle_probe(held)
        closes = live_probe and self.probe_successes >= self.config.success_threshold
        assert self.transitions == ([(State.HALF_OPEN, State.CLOSED)] if closes else [])

    @rule(held=consumes(held))
    def fail(self, held: Held) -> None:
        before = self.seen
        counted = self.counted_in_closed(held)
        if counted:
            self.outcomes.append((self.clock.now, True))
        self.transitions = []
        held.permit.record_failure(NetworkError())
        if held.probe:
            self.settle_probe(held)
        if counted:
            calls, failed = self.window()
            trips = (
                calls >= self.config.volume_threshold and failed >= self.config.failure_threshold
            )
            assert self.transitions == ([(State.CLOSED, State.OPEN)] if trips else [])
        elif held.probe and held.resets == self.resets and before is State.HALF_OPEN:
            assert self.transitions == [(State.HALF_OPEN, State.OPEN)]
        else:
            assert self.transitions == []

    @rule(held=consumes(held))
    def fail_filtered(self, held: Held) -> None:
        self.transitions = []
        held.permit.record_failure(ValidationError())
        if held.probe:
            self.settle_probe(held)
        assert self.transitions == [], "a filtered error moved the breaker"

    @rule(held=consumes(held))
    def cancel(self, held: Held) -> None:
        self.transitions = []
        held.permit.release()
        if held.probe:
            self.settle_probe(held)
        assert self.transitions == []

    @rule()
    def reset(self) -> None:
        self.breaker.reset()
        assert self.seen is State.CLOSED
        self.resets += 1
        self.probes_out = 0
        self.stretch += 1  # closed → closed fires no listener but forgets the window all the same
        self.outcomes = []

    @invariant()
    def snapshot_agrees(self) -> None:
        snap = self.breaker.snapshot()  # may itself turn the breaker half-open
        if self.listener_errors:
            raise self.listener_errors[0]
        assert snap["state"] == self.seen.value
        assert snap["probe_in_flight"] == bool(self.probes_out)
        if self.seen is State.CLOSED:
            assert (snap["calls_in_window"], snap["failures"]) == self.window()
        if self.seen is State.HALF_OPEN:
            assert snap["successes"] == self.probe_successes


TestBreakerMachine = BreakerMachine.TestCase
TestBreakerMachine.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
