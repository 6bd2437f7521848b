"""The waker (``LISTEN/NOTIFY`` per topic) and the one worker loop that claims due work."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import psycopg
import structlog

from proveniq_core.errors import CoreError

log = structlog.get_logger("proveniq_core.db")
T = TypeVar("T")


class Waker:
    """Wakes workers on ``NOTIFY`` of ``channel``; the payload names the topic (a table).

    Each topic has its own event, so several workers can share one listening connection.
    Workers wait with a timeout, so polling covers any missed notification.
    """

    def __init__(self, conninfo: str, channel: str = "proveniq_work") -> None:
        self.conninfo = conninfo
        self.channel = channel
        self._events: dict[str, asyncio.Event] = {}

    def _event(self, topic: str) -> asyncio.Event:
        return self._events.setdefault(topic, asyncio.Event())

    async def run(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.conninfo, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {self.channel}")
                    for event in self._events.values():  # catch up on anything missed
                        event.set()
                    async for note in conn.notifies():
                        self._event(note.payload).set()
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                log.warning("listen_reconnect", channel=self.channel, error=str(exc))
                await asyncio.sleep(1.0)

    async def wait(self, topic: str, timeout: float) -> None:
        event = self._event(topic)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):  # not wait_for: 3.11's can drop a cancel
                await event.wait()
        event.clear()


async def claim_loop(
    claim: Callable[[int], AsyncIterator[T]],
    handle: Callable[[T], Awaitable[None]],
    *,
    concurrency: int,
    waker: Waker | None,
    topic: str,
    poll: float,
    name: str,
    next_due: Callable[[], Awaitable[float | None]] | None = None,
    linger: float = 0.0,
    limit: Callable[[], int] | None = None,
) -> None:
    """The one worker loop: claim due work, handle it, up to ``concurrency`` items at once,
    until cancelled.

    ``linger``: seconds to wait after waking before claiming, so that work arriving in a
    burst is claimed by one statement (one commit) rather than one each; for work whose
    latency does not matter to a waiting client.

    ``limit()``: how many of the ``concurrency`` slots may be busy right now (at least one),
    asked before each claim: work of lower priority gives way while it says less.

    ``claim(n)`` yields up to ``n`` items (as many as there are free slots), each handled as
    soon as it is yielded; yielding fewer means nothing more is due, and the loop sleeps
    until a NOTIFY on ``topic`` (with a ``waker``) or ``poll`` seconds — or, with
    ``next_due``, no longer than the seconds it says the next item is due in. A
    ``CoreError`` (the database down, a lease lost) is logged, never fatal: the claim's
    lease runs out and the work is claimed again. Cancelling cancels the handlers in flight.
    """
    tasks: set[asyncio.Task[None]] = set()

    async def guarded(item: T) -> None:
        try:
            await handle(item)
        except CoreError as exc:
            log.warning(f"{name}_error", error=str(exc), code=exc.code)

    try:
        while True:
            allowed = concurrency if limit is None else min(concurrency, max(1, limit()))
            free = allowed - len(tasks)
            if free <= 0:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                continue
            claimed, wait = 0, poll
            try:
                async for item in claim(free):
                    claimed += 1
                    task = asyncio.create_task(guarded(item))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if claimed == free:
                    continue
                due = await next_due() if next_due is not None else None
                if due is not None:  # about to sleep: no longer than the next timer
                    wait = min(poll, max(due, 0.0) + 0.005)
            except CoreError as exc:
                log.warning(f"{name}_error", error=str(exc), code=exc.code)
            if waker is not None:
                await waker.wait(topic, wait)
            else:
                await asyncio.sleep(wait)
            if linger:
                await asyncio.sleep(linger)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
