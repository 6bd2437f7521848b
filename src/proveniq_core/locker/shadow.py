"""The device shadow (docs/architecture.md §4): what Core asked each locker to do and what the
device last reported.

A command is recorded (*asked*) when a saga parks waiting on it: its answer did not come
within the request's budget, or the device could not be reached. A reply that no waiting
send in this process takes (it came after the command's timeout) is kept as a fact keyed
by its ``commandId`` (*reported*), and the saga waiting on it is woken to adopt it instead
of sending again; a park that finds its answer already kept makes the saga due at once. A
command answered in time is not recorded: its answer went to the send that waited for it.
The device answers the process that asked (``replyTo``); when that process is gone, the
sagas waiting on its commands ask again from a live one (``ask_again``). The device's
presence (online/offline) is kept whenever it changes (``locker_presence``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from proveniq_core import db
from proveniq_core.locker.protocol import Reply, validate_ref

KEEP_DAYS = 7
"""Recorded commands are forgotten this many days after they were asked."""


async def ask(
    conn: db.Conn,
    command_id: str,
    locker_ref: str,
    type: str,
    *,
    asset_id: str | None,
    saga_id: str | None,
    asked_by: str,
) -> Reply | None:
    """Record, in the caller's transaction, that ``saga_id`` waits on ``command_id``, sent
    by the Core process ``asked_by``; returns the device's answer when it is recorded
    already (it came while the park was being written, or on an earlier try)."""
    row = await db.fetch_one(
        conn,
        "ask_locker_command",
        {
            "command_id": command_id,
            "locker_ref": locker_ref,
            "type": type,
            "asset_id": asset_id,
            "saga_id": saga_id,
            "asked_by": asked_by,
        },
    )
    return Reply.model_validate(row["reply"]) if row and row["reply"] else None


async def report(
    pool: db.Pool, locker_ref: str, reply: Reply, *, handover: bool = False
) -> str | None:
    """Keep a device's answer to a recorded command; returns the id of the saga waiting on
    it, or None when Core never recorded the command (or has its answer already).

    ``handover``: keep it even before the command is recorded (it was meant for this
    process and came late, perhaps while the saga that asked is still writing its park):
    the park then finds it and makes the saga due at once."""
    async with db.connection(pool) as conn:
        row = await db.fetch_one(
            conn,
            "hand_over_locker_reply" if handover else "report_locker_reply",
            {
                "command_id": reply.commandId,
                "locker_ref": locker_ref,
                "reply": db.jsonb(reply.model_dump(mode="json", exclude_none=True)),
            },
        )
    return str(row["saga_id"]) if row and row["saga_id"] else None


async def ask_again(pool: db.Pool, live: set[str]) -> list[str]:
    """Make due now the parked sagas that wait on an answer meant for a Core process not in
    ``live`` (gone: the answer would reach nobody); they ask again from a live process,
    under the same ``commandId``, which the device answers once. Returns their ids."""
    async with db.transaction(pool) as conn:
        rows = await db.fetch_all(conn, "wake_orphaned_asks", {"live": sorted(live)})
        if rows:
            await db.execute(conn, "notify_sagas")
    return [str(r["id"]) for r in rows]


async def start_retry(
    conn: db.Conn, asset_id: str, locker_ref: str, command_id: str
) -> tuple[datetime | None, Reply | None]:
    """A retried link, before its command goes out: its retry-queue entry marked retrying,
    in one statement. Returns the end of the locker's maintenance window (None when not in
    one) and the device's recorded answer to ``command_id`` (None while it has not answered)."""
    row = await db.fetch_one(
        conn,
        "start_link_retry",
        {"asset_id": asset_id, "locker_ref": locker_ref, "command_id": command_id},
    )
    assert row is not None  # one row, always
    reply = row["reply"]
    return row["maintenance_until"], Reply.model_validate(reply) if reply else None


async def report_presence(
    pool: db.Pool, reported: Mapping[str, Literal["online", "offline"]]
) -> None:
    """Keep each device's reported presence (locker ref: status) where it changed, in one
    statement."""
    refs = sorted(reported)
    for ref in refs:
        validate_ref(ref)
    async with db.connection(pool) as conn:
        await db.execute(
            conn,
            "report_locker_presence",
            {"locker_refs": refs, "statuses": [reported[ref] for ref in refs]},
        )


async def presence(conn: db.Conn, locker_ref: str) -> tuple[str | None, datetime | None]:
    """The presence the device last reported and when; (None, None) before its first."""
    row = await db.fetch_one(conn, "locker_presence", {"locker_ref": locker_ref})
    return (row["status"], row["reported_at"]) if row else (None, None)


async def commands(conn: db.Conn, locker_ref: str, limit: int = 20) -> list[dict[str, Any]]:
    """The locker's recorded commands, newest first: asked, and answered or still waiting."""
    rows = await db.fetch_all(
        conn, "locker_shadow_commands", {"locker_ref": locker_ref, "limit": limit}
    )
    return [
        {
            "commandId": r["command_id"],
            "type": r["type"],
            "assetId": str(r["asset_id"]) if r["asset_id"] else None,
            "askedAt": _iso(r["asked_at"]),
            "reply": r["reply"],
            "repliedAt": _iso(r["replied_at"]),
        }
        for r in rows
    ]


async def prune(pool: db.Pool, days: int = KEEP_DAYS) -> int:
    """Forget commands asked more than ``days`` ago; returns how many."""
    async with db.connection(pool) as conn:
        return await db.execute(conn, "prune_locker_commands", {"days": days})


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at else None
