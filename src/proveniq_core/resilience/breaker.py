"""Circuit breakers: fail fast while a dependency is down, then probe it one call at a time.

States (docs/architecture.md §3)::

    closed ──── failures ≥ failure_threshold and calls ≥ volume_threshold ────▶ open
                (both counted over the rolling window)
    open ────── timeout seconds have passed (noticed on the next look) ───────▶ half_open
    half_open ─ success_threshold probes succeed, one after another ──────────▶ closed
    half_open ─ a probe fails ────────────────────────────────────────────────▶ open

*Failure counting.* The usual answer to "what trips a breaker" is "failure count exceeds
threshold within the volume threshold window", so failures are counted over a rolling time
window, not as a streak: the breaker opens as soon as the window holds at least
``failure_threshold`` failures and at least ``volume_threshold`` calls (failures count as
calls). "At least": the configuration reads "open after 5 failures". The condition is
checked when a failure is recorded, never on a success: a success is evidence of health, and
opening on it would cut off a dependency that has just answered (after 3 failures then 2
successes the ledger breaker stays closed; its next failure opens it). Entering closed or
open empties the window: a recovered dependency starts with a clean slate.

*Window.* 60 s by default. The volume thresholds (10 for the locker, 5 for the ledger) are
small absolute counts, and a breaker per locker device sees only a few commands a minute; in a
10 s window such a breaker would almost never reach its volume, so a dead device would
never trip. A minute is long enough to reach the volume at that rate and short enough that
old failures do not linger. Every call in the window is kept as a timestamp (a float per call:
about half a megabyte at 300 calls/s, for the busiest breaker).

*Filtered errors.* ``config.counts(exc)`` decides whether an exception says the dependency is
unhealthy. An exception it rejects (a validation error, a conflict) is *ignored*: it is
neither a failure nor a success and it is not a call towards the volume, because it says
nothing either way about the dependency's health. As a half-open probe it frees the probe slot
without moving the breaker. Cancellation (and any other ``BaseException``
that is not an ``Exception``) is ignored the same way.

*Permits.* ``acquire()`` admits one call and returns a ``Permit`` that must report that
call's outcome exactly once; ``with breaker.acquire():`` and ``await breaker.call(fn)`` do it
for you, including on cancellation. An outcome belongs to the state it was admitted in: a
slow call admitted while closed that ends after the breaker has opened (or after ``reset()``)
is dropped, so it can never be taken for the half-open probe's result. Put a call's timeout
*inside* the guarded block, so that the breaker sees ``TimeoutError`` rather than the
cancellation an outer ``asyncio.timeout`` delivers inside it.

Everything here is synchronous and does no I/O, so within one event loop each method runs
without interleaving: no locks are needed.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from enum import StrEnum
from types import TracebackType
from typing import Final, ParamSpec, TypedDict, TypeVar

import structlog

__all__ = [
    "LEDGER",
    "LOCKER",
    "BreakerConfig",
    "BreakerRegistry",
    "BreakerSnapshot",
    "CircuitBreaker",
    "CircuitOpenError",
    "Listener",
    "Permit",
    "State",
    "count_all",
]

log = structlog.get_logger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


Listener = Callable[[str, State, State], None]
"""Called as ``listener(name, old, new)`` after the breaker has changed state."""


def count_all(exc: Exception) -> bool:
    """The default error filter: every exception counts as a failure."""
    return True


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """How a breaker counts and when it moves; times are in seconds of the breaker's clock."""

    failure_threshold: int
    success_threshold: int
    timeout: float
    """How long the breaker stays open before it lets a probe through."""
    volume_threshold: int
    """The fewest calls the window must hold before the breaker may open."""
    window: float = 60.0
    counts: Callable[[Exception], bool] = count_all
    """Whether an exception counts as a failure; one it rejects is ignored altogether."""

    def __post_init__(self) -> None:
        for field in ("failure_threshold", "success_threshold", "volume_threshold"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be at least 1")
        for field in ("timeout", "window"):
            if not getattr(self, field) > 0:
                raise ValueError(f"{field} must be positive")

    def with_filter(self, counts: Callable[[Exception], bool]) -> BreakerConfig:
        return replace(self, counts=counts)


# The presets (docs/architecture.md §3). Pair them with the subsystem's filter, e.g.
# ``LOCKER.with_filter(is_transport_error)``: left as they are, every exception counts.
LOCKER: Final = BreakerConfig(
    failure_threshold=5, success_threshold=3, timeout=30.0, volume_threshold=10
)
LEDGER: Final = BreakerConfig(
    failure_threshold=3, success_threshold=2, timeout=10.0, volume_threshold=5
)


class CircuitOpenError(Exception):
    """The circuit refused the call without trying it.

    ``retry_after`` is how many seconds remain until the breaker lets a probe through; it is
    0 when it is half-open and another call is already probing."""

    def __init__(self, name: str, retry_after: float) -> None:
        super().__init__(name, retry_after)
        self.name = name
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"circuit {self.name!r} is open; retry after {self.retry_after:.3f} s"


class BreakerSnapshot(TypedDict):
    """A breaker as the ops API shows it; counts are those of the current state."""

    name: str
    state: str
    calls_in_window: int  # closed: calls in the window; otherwise 0
    failures: int  # closed: failures in the window; otherwise 0
    successes: int  # closed: successes in the window; half-open: probes that succeeded
    probe_in_flight: bool
    opened_at: float | None  # breaker clock reading when it last opened; None when closed
    retry_after: float  # seconds until a probe may go; 0 unless open


class _Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    IGNORED = "ignored"


class Permit:
    """Leave to make one call through a breaker; report the call's outcome exactly once.

    As a context manager it reports for you: success if the block ends normally, the
    exception if one escapes (through the error filter), ignored for cancellation. An outcome
    recorded explicitly inside the block takes precedence."""

    __slots__ = ("_breaker", "_done", "_generation", "is_probe")

    def __init__(self, breaker: CircuitBreaker, generation: int, *, is_probe: bool) -> None:
        self._breaker = breaker
        self._generation = generation
        self._done = False
        self.is_probe = is_probe

    def record_success(self) -> None:
        self._settle(_Outcome.SUCCESS)

    def record_failure(self, exc: Exception) -> None:
        """Report a failed call; it counts only if the breaker's error filter says so."""
        self._check_pending()
        counted = False
        try:
            counted = self._breaker.config.counts(exc)
        finally:  # a filter that raises must not leave a half-open probe slot taken for ever
            self._settle(_Outcome.FAILURE if counted else _Outcome.IGNORED)

    def release(self) -> None:
        """Give the permit back without an outcome (the call was cancelled or never made)."""
        self._settle(_Outcome.IGNORED)

    def _check_pending(self) -> None:
        if self._done:
            raise RuntimeError(f"permit for circuit {self._breaker.name!r} already settled")

    def _settle(self, outcome: _Outcome) -> None:
        self._check_pending()
        self._done = True
        self._breaker._settle(self._generation, self.is_probe, outcome)

    def __enter__(self) -> Permit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._done:
            return
        if exc is None:
            self.record_success()
        elif isinstance(exc, Exception):
            self.record_failure(exc)
        else:
            self.release()


class CircuitBreaker:
    """One named circuit. See the module docstring for how it counts."""

    def __init__(
        self,
        name: str,
        config: BreakerConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name: Final = name
        self.config: Final = config
        self._clock = clock
        self._listeners: list[Listener] = []
        self._state = State.CLOSED
        # Bumped on every transition and reset; a permit from another generation is stale.
        self._generation = 0
        self._calls: deque[float] = deque()  # closed: end times of counted calls
        self._failures: deque[float] = deque()  # closed: end times of counted failures
        self._probe_successes = 0
        self._probe_in_flight = False
        self._opened_at: float | None = None

    @property
    def state(self) -> State:
        """The current state; an open breaker whose timeout has passed turns half-open here."""
        if self._state is State.OPEN and self._clock() >= self._reopens_at():
            self._transition(State.HALF_OPEN)
        return self._state

    @property
    def retry_after(self) -> float:
        """Seconds until the breaker lets a probe through; 0 unless it is open."""
        if self.state is not State.OPEN:
            return 0.0
        return max(0.0, self._reopens_at() - self._clock())

    def acquire(self) -> Permit:
        """Admit one call, or raise ``CircuitOpenError`` at once."""
        state = self.state
        if state is State.CLOSED:
            return Permit(self, self._generation, is_probe=False)
        if state is State.HALF_OPEN and not self._probe_in_flight:
            self._probe_in_flight = True
            return Permit(self, self._generation, is_probe=True)
        raise CircuitOpenError(self.name, self.retry_after)

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` through the breaker; its exceptions propagate."""
        with self.acquire():
            return await fn(*args, **kwargs)

    def reset(self) -> None:
        """Close the breaker and forget everything, including the calls in flight (ops)."""
        self._transition(State.CLOSED)

    def on_change(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(name, old, new)`` after each transition; returns an unsubscriber.

        A listener that raises is logged and otherwise ignored: observing a breaker must not
        change what it does."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def snapshot(self) -> BreakerSnapshot:
        state = self.state
        calls = failures = 0
        if state is State.CLOSED:
            self._prune(self._clock())
            calls, failures = len(self._calls), len(self._failures)
        return BreakerSnapshot(
            name=self.name,
            state=state.value,
            calls_in_window=calls,
            failures=failures,
            successes=self._probe_successes if state is State.HALF_OPEN else calls - failures,
            probe_in_flight=self._probe_in_flight,
            opened_at=self._opened_at,
            retry_after=self.retry_after,
        )

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self._state.value}>"

    # -- internals ---------------------------------------------------------------------

    def _reopens_at(self) -> float:
        assert self._opened_at is not None
        return self._opened_at + self.config.timeout

    def _settle(self, generation: int, is_probe: bool, outcome: _Outcome) -> None:
        if generation != self._generation:
            return  # admitted before the last transition or reset: no longer relevant
        if is_probe:
            self._probe_in_flight = False
            if outcome is _Outcome.FAILURE:
                self._transition(State.OPEN)
            elif outcome is _Outcome.SUCCESS:
                self._probe_successes += 1
                if self._probe_successes >= self.config.success_threshold:
                    self._transition(State.CLOSED)
            return
        if outcome is _Outcome.IGNORED:
            return
        now = self._clock()
        self._prune(now)
        self._calls.append(now)
        if outcome is _Outcome.SUCCESS:
            return
        self._failures.append(now)
        if (
            len(self._failures) >= self.config.failure_threshold
            and len(self._calls) >= self.config.volume_threshold
        ):
            self._transition(State.OPEN)

    def _prune(self, now: float) -> None:
        horizon = now - self.config.window
        for times in (self._calls, self._failures):
            while times and times[0] <= horizon:
                times.popleft()

    def _transition(self, new: State) -> None:
        old = self._state
        self._state = new
        self._generation += 1
        self._calls.clear()
        self._failures.clear()
        self._probe_successes = 0
        self._probe_in_flight = False
        if new is State.OPEN:
            self._opened_at = self._clock()
        elif new is State.CLOSED:
            self._opened_at = None
        if old is not new:
            _notify(self._listeners, self.name, old, new)


def _notify(listeners: list[Listener], name: str, old: State, new: State) -> None:
    for listener in list(listeners):  # a copy: a listener may unsubscribe itself
        try:
            listener(name, old, new)
        except Exception:
            log.exception("circuit breaker listener failed", circuit=name, old=old, new=new)


class BreakerRegistry:
    """Named breakers, created on first use; iterates in name order (``GET /api/ops/circuits``)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}
        self._listeners: list[Listener] = []

    def get(self, name: str, config: BreakerConfig) -> CircuitBreaker:
        """The breaker called ``name``, created with ``config`` if it does not exist yet.

        Raises ``ValueError`` if it exists with another config: one name, one policy."""
        breaker = self._breakers.get(name)
        if breaker is None:
            breaker = self._breakers[name] = CircuitBreaker(name, config, clock=self._clock)
            breaker.on_change(self._forward)
        elif breaker.config != config:
            raise ValueError(f"circuit {name!r} already exists with another config")
        return breaker

    @property
    def clock(self) -> Callable[[], float]:
        """The clock of every breaker here (``opened_at`` readings are on it)."""
        return self._clock

    def on_change(self, listener: Listener) -> Callable[[], None]:
        """Observe the transitions of every breaker, present and future."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def snapshots(self) -> list[BreakerSnapshot]:
        return [breaker.snapshot() for breaker in self]

    def __getitem__(self, name: str) -> CircuitBreaker:
        return self._breakers[name]

    def __contains__(self, name: object) -> bool:
        return name in self._breakers

    def __iter__(self) -> Iterator[CircuitBreaker]:
        return iter([self._breakers[name] for name in sorted(self._breakers)])

    def __len__(self) -> int:
        return len(self._breakers)

    def _forward(self, name: str, old: State, new: State) -> None:
        _notify(self._listeners, name, old, new)
