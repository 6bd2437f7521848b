"""A fleet's presence reports reach the ledger without taking the pool (``service._reconcile``)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

from structlog.testing import capture_logs

from proveniq_core import db, service
from proveniq_core.locker.gateway import LockerGateway
from proveniq_core.saga.retry_queue import RetryQueue
from tests.helpers import eventually


async def test_a_fleet_reporting_at_once_is_recorded_without_taking_the_pool(
    database_url: str,
) -> None:
    """A thousand lockers report online at once and half of them offline just after (a
    broker's restart, or the retained reports a process reads as it starts). Through a pool of
    one connection that refuses a wait of 0.3 s, every locker's latest report is recorded and
    none is refused: the reports are written together, one statement at a time."""
    pool = await db.open_pool(database_url, min_size=1, max_size=1, timeout=0.3)
    await pool.wait()
    tasks: set[asyncio.Task[Any]] = set()
    offline_gateway = cast(LockerGateway, SimpleNamespace(connected=False))  # wakes nobody
    hook = service._reconcile(pool, cast(RetryQueue, None), cast(Any, None), offline_gateway, tasks)
    refs = [f"burst-{i:04}" for i in range(1000)]
    try:
        with capture_logs() as logs:
            for ref in refs:
                hook("online", {"lockerRef": ref})
            for ref in refs[::2]:
                hook("offline", {"lockerRef": ref})
            await eventually(lambda: not tasks, "the presence writes")
        async with db.connection(pool) as conn:
            cur = await conn.execute(
                "SELECT locker_ref, status FROM locker_presence WHERE locker_ref LIKE 'burst-%'"
            )
            recorded = {row["locker_ref"]: row["status"] for row in await cur.fetchall()}
    finally:
        await pool.close()
    assert recorded == {ref: "offline" if i % 2 == 0 else "online" for i, ref in enumerate(refs)}
    assert [e for e in logs if e["event"] == "shadow.presence_not_recorded"] == []
