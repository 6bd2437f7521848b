"""The saga engine's time: the database's, which a test clock can move forward.

Leases and timers are compared with PostgreSQL's ``now()``: every process reads the one
server clock, so a host whose clock drifts can neither steal a lease nor fire a timer early.
A ``Clock`` adds ``offset()`` seconds to that time in everything the engine writes and
claims, and makes the engine's own waits (a retry's backoff, the lease renewal period); the
real clock adds nothing and waits in real time. A test moves ``offset`` forward instead of
sleeping through a lease.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

__all__ = ["SYSTEM", "Clock", "SystemClock"]


class Clock(Protocol):
    def offset(self) -> float:
        """Seconds to add to the database's ``now()``."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """Real time: the database's ``now()`` as it is, and real waits."""

    def offset(self) -> float:
        return 0.0

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM = SystemClock()
