"""A locker's late answer wakes its parked saga even when it comes before the park commits.

The soak found assets left ``pending_link`` for the whole retry delay (5 min) while the device
held the link: the answer came while the request was still writing the park, the wake was
refused (the saga was still held) and nothing tried again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from proveniq_core.errors import LedgerDownError
from proveniq_core.saga.registration import InFlight


class Saga:
    """A saga the test parks at will: ``wake`` succeeds only once it is parked."""

    def __init__(self, fail_with: Exception | None = None) -> None:
        self.parked = asyncio.Event()
        self.woken = asyncio.Event()
        self.attempts = 0
        self.fail_with = fail_with

    async def wake(self, saga_id: str) -> bool:
        self.attempts += 1
        if self.fail_with is not None and not self.parked.is_set():
            raise self.fail_with
        if self.parked.is_set():
            self.woken.set()
            return True
        return False


async def answer_late(inflight: InFlight, command: str, saga_id: str) -> None:
    """A command that outlives its request (the saga asks to be woken), then is answered."""
    answer = asyncio.Event()

    async def send() -> dict[str, Any]:
        await answer.wait()
        return {"lockerId": "LKR-1"}

    task = inflight.start(command, send, keep=60)
    inflight.wake_on_success(command, saga_id)
    answer.set()
    await task


async def until(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not check():
        assert time.monotonic() < deadline, "condition not met in 5 s"
        await asyncio.sleep(0.01)


async def test_an_answer_before_the_park_commits_wakes_the_saga_once_parked() -> None:
    """The wake refused while the saga is held is tried again; once parked, the saga wakes."""
    saga = Saga()
    inflight = InFlight(saga.wake, patience=10)
    await answer_late(inflight, "cmd-1", "saga-1")  # before the park commits
    await until(lambda: saga.attempts >= 2)  # refused, and tried again
    assert not saga.woken.is_set()
    saga.parked.set()  # the park commits
    async with asyncio.timeout(5):
        await saga.woken.wait()


async def test_an_answer_while_the_database_is_down_wakes_the_saga_when_it_is_back() -> None:
    """A wake that fails with the ledger down is tried again until it goes through."""
    saga = Saga(fail_with=LedgerDownError("down"))
    inflight = InFlight(saga.wake, patience=10)
    await answer_late(inflight, "cmd-2", "saga-2")
    await until(lambda: saga.attempts >= 2)
    saga.parked.set()  # the database is back and the saga parked
    async with asyncio.timeout(5):
        await saga.woken.wait()


async def test_a_saga_never_parked_is_left_alone_after_the_patience() -> None:
    """Trying again is bounded: a saga that never parks stops being woken."""
    saga = Saga()
    inflight = InFlight(saga.wake, patience=0.3)
    await answer_late(inflight, "cmd-3", "saga-3")
    await until(lambda: saga.attempts >= 1)
    await until(lambda: not inflight._wakers)  # the waker gave up by itself
    assert saga.attempts >= 2
    assert not saga.woken.is_set()
