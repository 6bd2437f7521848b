"""Helpers shared by the test suites: waiting on a condition with a deadline."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def eventually(
    check: Callable[[], Any] | Callable[[], Awaitable[Any]],
    what: str = "condition",
    within: float = 20.0,
    every: float = 0.05,
) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy, and return that;
    fail after ``within`` seconds naming ``what`` and the last value seen."""
    deadline = time.monotonic() + within
    while True:
        found = check()
        if inspect.isawaitable(found):
            found = await found
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what} (last: {found!r})"
        await asyncio.sleep(every)


def until(check: Callable[[], Any], what: str = "condition", within: float = 30.0) -> Any:
    """``eventually`` for code outside an event loop: poll a sync ``check``, blocking."""
    deadline = time.monotonic() + within
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what} (last: {found!r})"
        time.sleep(0.05)
    return found
