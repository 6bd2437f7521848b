"""Reading durable saga state: the saga row and its step log (one row per attempt)."""

from __future__ import annotations

from typing import Literal, get_args

from proveniq_core import db

# The saga statuses; the database's CHECK constraint on sagas.status holds the same list.
SagaStatus = Literal[
    "running", "completed", "compensating", "compensated", "compensation_failed", "failed"
]
SAGA_STATUSES: tuple[str, ...] = get_args(SagaStatus)


async def load(conn: db.Conn, saga_id: str) -> tuple[db.Row, list[db.Row]] | None:
    saga = await db.fetch_one(conn, "get_saga", {"id": saga_id})
    if saga is None:
        return None
    return saga, await db.fetch_all(conn, "get_saga_steps", {"saga_id": saga_id})
