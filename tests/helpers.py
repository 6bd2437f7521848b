"""Helpers shared by the test suites: waiting on a condition with a deadline, running the CLI."""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
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


def run_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    home: Path | None = None,
    columns: int = 200,
    inherit: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m proveniq_core ARGS`` to completion (60 s at most) and capture its output.

    The child sees this process's environment (without its ``PROVENIQ_*`` variables unless
    ``inherit``), ``COLUMNS``, ``PROVENIQ_HOME`` when ``home`` is given, then ``env``.
    """
    environ = {k: v for k, v in os.environ.items() if inherit or not k.startswith("PROVENIQ_")}
    environ["COLUMNS"] = str(columns)
    if home is not None:
        environ["PROVENIQ_HOME"] = str(home)
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "proveniq_core", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
