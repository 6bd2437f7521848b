"""The one worker loop, with a claim and a waker the test drives."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

from proveniq_core import db
from tests.helpers import eventually


class Bell:
    """A waker the test rings."""

    def __init__(self) -> None:
        self.rung = asyncio.Event()

    async def wait(self, topic: str, timeout: float) -> None:
        await self.rung.wait()
        self.rung.clear()


async def burst(linger: float) -> tuple[list[int], list[int]]:
    """One item is queued and the loop woken; two more follow 20 ms later, unannounced.
    Returns how many items each claim found, and the items handled."""
    queue: list[int] = []
    found: list[int] = []
    handled: list[int] = []
    bell = Bell()

    async def claim(limit: int) -> AsyncIterator[int]:
        batch = queue[:limit]
        del queue[:limit]
        found.append(len(batch))
        for item in batch:
            yield item

    async def handle(item: int) -> None:
        handled.append(item)

    loop = asyncio.create_task(
        db.claim_loop(
            claim,
            handle,
            concurrency=10,
            waker=cast(db.Waker, bell),
            topic="t",
            poll=60,
            name="t",
            linger=linger,
        )
    )
    try:
        await eventually(lambda: found == [0], within=2)  # idle, waiting for the bell
        queue.append(1)
        bell.rung.set()
        await asyncio.sleep(0.02)
        queue.extend([2, 3])
        await asyncio.sleep(linger + 0.2)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    return found, handled


async def test_a_lingering_loop_claims_a_burst_in_one_claim() -> None:
    found, handled = await burst(linger=0.1)
    assert found == [0, 3]
    assert sorted(handled) == [1, 2, 3]


async def test_without_lingering_the_burst_waits_for_the_next_wake() -> None:
    found, handled = await burst(linger=0.0)
    assert found == [0, 1]
    assert handled == [1]


async def test_a_limit_lowers_how_many_run_at_once_while_it_says_so() -> None:
    """Work of lower priority: while ``limit()`` says 1, one item at a time runs out of a
    concurrency of 5; once it lifts, the rest run together. Nothing is starved meanwhile."""
    queue = list(range(10_000))  # never drained while limited, however late a check looks
    running: set[int] = set()
    most: list[int] = []
    release = asyncio.Event()
    backlog = {"on": True}

    async def claim(limit: int) -> AsyncIterator[int]:
        batch = queue[:limit]
        del queue[:limit]
        for item in batch:
            yield item

    async def handle(item: int) -> None:
        running.add(item)
        most.append(len(running))
        if not backlog["on"]:
            await release.wait()
        else:
            await asyncio.sleep(0.005)
        running.discard(item)

    loop = asyncio.create_task(
        db.claim_loop(
            claim,
            handle,
            concurrency=5,
            waker=None,
            topic="t",
            poll=0.01,
            name="t",
            limit=lambda: 1 if backlog["on"] else 5,
        )
    )
    try:
        await eventually(lambda: len(queue) <= 9_995, within=2)  # progress while limited
        assert max(most) == 1
        backlog["on"] = False
        await eventually(lambda: len(running) == 5, within=2)
    finally:
        release.set()
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
