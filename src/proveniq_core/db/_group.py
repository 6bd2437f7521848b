"""Group commit: many tasks' small writes in one transaction, one commit for all of them.

A task hands ``GroupCommit.commit`` a *unit*: a coroutine function that writes on the
connection it is given. Units are committed in batches by one flush at a time: whatever
is waiting when the previous commit ends goes into the next transaction (pipelined), so
under load a commit carries many units and when idle a unit commits at once, alone. Each
caller waits until its own unit is durable (or has failed) before it goes on.

A unit may instead be a *row*: the parameters of one call to a statement that takes many
(``commit_row``). A batch's rows for one statement are sent together as one JSON array: one
parameter to encode and one result to read, however many tasks wrote.

When a batch fails because one unit's statement failed (a constraint, a fence), the batch
rolls back and each of its units is committed again on its own: only the unit at fault
sees its error. A unit must therefore be safe to run again after a rollback. When the
database cannot be reached, or no connection came free in time, every unit of the batch
gets that error at once.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from typing import Any

from proveniq_core.db._pool import (
    Conn,
    Pool,
    connection,
    execute,
    is_ledger_down,
    jsonb,
    transaction,
)
from proveniq_core.errors import LedgerSaturatedError

Unit = Callable[[Conn], Awaitable[None]]

Row = tuple[str, dict[str, Any]]  # a statement taking a JSON array of rows, and one row
_Waiting = tuple[Unit, Row | None, "asyncio.Future[None]"]  # unit, the row it is, its outcome


class GroupCommit:
    """Commits units of writes on ``pool``, up to ``max_batch`` per transaction."""

    def __init__(self, pool: Pool, *, max_batch: int = 100) -> None:
        self.pool = pool
        self.max_batch = max_batch
        self._waiting: list[_Waiting] = []
        self._flushing: asyncio.Task[None] | None = None

    async def commit(self, unit: Unit) -> None:
        """Run ``unit`` in the next group's transaction; return once it is committed, or
        raise its error. Cancelling the wait does not withdraw a unit already being written."""
        await self._enqueue(unit, None)

    async def commit_row(self, query: str, row: dict[str, Any]) -> None:
        """Have the named ``query``, which takes a JSON array of rows as ``rows``, write
        ``row`` in the next group's transaction, with the other rows for it in one statement;
        return once it is committed, or raise its error. A row alone is one statement, so it
        needs no transaction (autocommit costs a third of a pipelined transaction's client
        time)."""

        async def alone(conn: Conn) -> None:
            await execute(conn, query, {"rows": jsonb([row])})

        await self._enqueue(alone, (query, row))

    async def _enqueue(self, unit: Unit, row: Row | None) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((unit, row, done))
        if self._flushing is None:
            # A context of its own: the flush belongs to none of the tasks it writes for.
            self._flushing = asyncio.create_task(self._flush(), context=contextvars.Context())
        await done

    async def _flush(self) -> None:
        batch: list[_Waiting] = []
        try:
            while self._waiting:
                batch = [w for w in self._waiting[: self.max_batch] if not w[2].done()]
                del self._waiting[: self.max_batch]
                if batch:
                    await self._write(batch)
        except BaseException as exc:  # cancelled with the event loop: nobody waits forever
            for *_, done in batch + self._waiting:
                _settle(done, exc)
            self._waiting.clear()
            raise
        finally:
            self._flushing = None

    async def _write(self, batch: list[_Waiting]) -> None:
        try:
            await self._together(batch)
        except Exception as exc:
            if len(batch) == 1 or is_ledger_down(exc) or isinstance(exc, LedgerSaturatedError):
                for *_, done in batch:
                    _settle(done, exc)
                return
            # Rolled back whole: each unit again on its own, so only the faulty one fails.
            for waiting in batch:
                try:
                    await self._together([waiting])
                except Exception as alone:
                    _settle(waiting[2], alone)
                else:
                    _settle(waiting[2], None)
            return
        for *_, done in batch:
            _settle(done, None)

    async def _together(self, batch: list[_Waiting]) -> None:
        """One transaction holding the batch's units, committed; its rows for a statement in one
        call to it."""
        if len(batch) == 1 and batch[0][1] is not None:
            async with connection(self.pool) as conn:
                await batch[0][0](conn)
            return
        rows: dict[str, list[dict[str, Any]]] = {}
        async with transaction(self.pool, pipeline=True) as conn:
            for unit, row, _ in batch:
                if row is None:
                    await unit(conn)
                else:
                    rows.setdefault(row[0], []).append(row[1])
            for query, written in rows.items():
                await execute(conn, query, {"rows": jsonb(written)})


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():  # its waiter was cancelled
        return
    if error is None:
        done.set_result(None)
    elif isinstance(error, asyncio.CancelledError):
        done.cancel()
    else:
        done.set_exception(error)
