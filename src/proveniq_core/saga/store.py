"""Durable saga state: the saga row and one checkpoint row per (step, phase)."""

from __future__ import annotations

from typing import Any

from proveniq_core import db


async def create(
    conn: db.Conn,
    *,
    saga_id: str,
    name: str,
    tenant_id: str | None,
    input: dict[str, Any],
    owner: str,
    lease: float,
) -> None:
    await db.execute(
        conn,
        "insert_saga",
        {
            "id": saga_id,
            "name": name,
            "tenant_id": tenant_id,
            "input": db.jsonb(input),
            "owner": owner,
            "lease": lease,
        },
    )


async def step_started(conn: db.Conn, saga_id: str, index: int, phase: str, name: str) -> None:
    await db.execute(
        conn,
        "step_started",
        {"saga_id": saga_id, "step_index": index, "phase": phase, "name": name},
    )


async def step_finished(
    conn: db.Conn,
    saga_id: str,
    index: int,
    phase: str,
    *,
    attempts: int,
    output: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> None:
    await db.execute(
        conn,
        "step_finished",
        {
            "saga_id": saga_id,
            "step_index": index,
            "phase": phase,
            "status": "failed" if error is not None else "completed",
            "attempts": attempts,
            "output": db.jsonb(output) if output is not None else None,
            "error": db.jsonb(error) if error is not None else None,
        },
    )
    if output:
        await db.execute(conn, "saga_set_data", {"id": saga_id, "data": db.jsonb(output)})


async def set_status(
    conn: db.Conn, saga_id: str, status: str, error: dict[str, Any] | None = None
) -> None:
    await db.execute(
        conn,
        "saga_set_status",
        {"id": saga_id, "status": status, "error": db.jsonb(error) if error else None},
    )


async def load(conn: db.Conn, saga_id: str) -> tuple[db.Row, list[db.Row]] | None:
    saga = await db.fetch_one(conn, "get_saga", {"id": saga_id})
    if saga is None:
        return None
    return saga, await db.fetch_all(conn, "get_saga_steps", {"saga_id": saga_id})
