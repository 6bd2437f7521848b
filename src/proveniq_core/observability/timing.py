"""Where a request's time went, for its ``Server-Timing`` response header (W3C Server Timing).

The request middleware opens one ``Waits`` per request; code that waits in the request on
another system adds that wait (``waiting("locker")`` around the link). The header then
tells a client, an operator or the load test how long the request waited on the locker and
how long Core took itself::

    Server-Timing: locker;dur=512.3, core;dur=14.2

``core`` is the time from the request reaching Core's middleware to its response starting,
less the waits. Durations are in milliseconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

Waits = dict[str, float]

_waits: ContextVar[Waits | None] = ContextVar("server_timing_waits", default=None)


@contextmanager
def request() -> Iterator[Waits]:
    """Collect the waits of the request running in this context (and the tasks it starts)."""
    waits: Waits = {}
    token = _waits.set(waits)
    try:
        yield waits
    finally:
        _waits.reset(token)


@contextmanager
def waiting(name: str) -> Iterator[None]:
    """Count the time inside the block as the current request waiting on ``name``."""
    waits = _waits.get()
    started = time.perf_counter()
    try:
        yield
    finally:
        if waits is not None:
            waits[name] = waits.get(name, 0.0) + time.perf_counter() - started


def header(waits: Waits, total: float) -> bytes:
    """The ``Server-Timing`` value: each wait, then ``core`` (``total`` less the waits)."""
    core = max(total - sum(waits.values()), 0.0)
    parts = [f"{name};dur={seconds * 1000:.1f}" for name, seconds in waits.items()]
    parts.append(f"core;dur={core * 1000:.1f}")
    return ", ".join(parts).encode()
