"""How a saga's progress is written: its row, its fenced checkpoints, its log read back.

Every write about a claimed saga goes through one function, ``saga_checkpoint()`` (see
the migrations), called for one saga or many by ``saga_checkpoints()`` with each checkpoint
as a JSON row (``Journal.row``), fenced on the epoch of the claim: when another process has
claimed the saga since, it fails with SQLSTATE ``PVL01`` and the writer gets
``LeaseLostError``. A saga started in this process is inserted with its first commit. Times
written (a lease, a timer) are on the engine's clock.

A checkpoint that is not part of a ledger step's transaction is group-committed
(``db.GroupCommit``): the checkpoints of all sagas waiting at that moment share one
transaction, one statement and one commit, and each saga goes on only once its own is
durable.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg

from proveniq_core import db
from proveniq_core.saga.clock import Clock
from proveniq_core.saga.model import (
    HOLD,
    Attempt,
    AttemptStatus,
    LeaseLostError,
    Phase,
    SagaDefinition,
    SagaStatus,
    StepError,
)
from proveniq_core.saga.planner import Run, SagaState, Undo

LEASE_LOST = "PVL01"  # SQLSTATE raised by saga_checkpoint() on a stale epoch


Precondition = Callable[[db.Conn, dict[str, Any]], Awaitable[None]]
"""What must hold for a saga to start, checked in its first transaction (``SagaEngine.run``)."""


def phase_of(action: Run | Undo) -> Phase:
    return Phase.EXECUTE if isinstance(action, Run) else Phase.COMPENSATE


@dataclass(slots=True)
class SagaRun:
    """One saga as this process drives it, under the epoch of its claim."""

    saga_id: str
    epoch: int
    definition: SagaDefinition
    data: dict[str, Any]
    state: SagaState
    tenant_id: str | None = None
    rounds: int = 0
    create: dict[str, Any] | None = None  # insert the saga row with the first commit
    # Checkpoint arguments written with the next checkpoint, in its statement (``Journal.hold``):
    # the end of a call to another system whose successor is a transactional step, or the
    # first of two transactional steps run together. Replaced, never changed in place.
    pending: dict[str, Any] | None = None
    precondition: Precondition | None = None  # checked before the saga row is inserted

    def record(
        self,
        action: Run | Undo,
        number: int,
        status: AttemptStatus,
        error: StepError | None = None,
    ) -> None:
        """Append an attempt to the log this process keeps, once its checkpoint committed."""
        attempt = Attempt(action.index, phase_of(action), number, status, error)
        self.state = self.state.record(attempt)


def attempt_row(index: int, phase: Phase, attempt: int, name: str) -> dict[str, Any]:
    """A step log row as ``saga_checkpoint()`` begins it."""
    return {"i": index, "phase": phase.value, "attempt": attempt, "name": name}


def end_row(
    row: dict[str, Any], status: AttemptStatus, output: Any = None, error: Any = None
) -> dict[str, Any]:
    """A step log row as ``saga_checkpoint()`` ends it."""
    return {**row, "status": status.value, "output": output, "error": error}


@contextlib.contextmanager
def fenced(run: SagaRun) -> Iterator[None]:
    """A refused fence (SQLSTATE PVL01) as ``LeaseLostError``, wherever it surfaces: at the
    checkpoint, or at the commit of a pipelined transaction."""
    try:
        yield
    except psycopg.Error as exc:
        if exc.sqlstate == LEASE_LOST:
            raise LeaseLostError(f"saga {run.saga_id}: lease lost (epoch {run.epoch})") from None
        raise


async def write_rows(conn: db.Conn, rows: list[dict[str, Any]]) -> None:
    """Checkpoints (``Journal.row``) written on ``conn`` by one ``saga_checkpoints()`` call."""
    await db.execute(conn, "saga_checkpoints", {"rows": db.jsonb(rows)})


def _one_or_all(rows: list[dict[str, Any]]) -> dict[str, Any] | list[dict[str, Any]] | None:
    """``saga_checkpoint()``'s form of some attempt rows: none, one object, or an array."""
    return None if not rows else rows[0] if len(rows) == 1 else rows


class Journal:
    """Writes sagas' progress to ``pool``; a claim holds for ``lease`` seconds of ``clock``."""

    def __init__(self, pool: db.Pool, clock: Clock, lease: float) -> None:
        self.pool = pool
        self.clock = clock
        self.lease = lease
        self.group = db.GroupCommit(pool)

    def saga_row(
        self,
        saga_id: str,
        definition: SagaDefinition,
        input: dict[str, Any],
        tenant_id: str | None,
        *,
        owner: str | None,
        delay: float = 0.0,
    ) -> dict[str, Any]:
        """``insert_saga``'s parameters: run by ``owner``, or due in ``delay`` seconds."""
        offset = self.clock.offset()
        return {
            "id": saga_id,
            "name": definition.name,
            "tenant_id": tenant_id,
            "input": db.jsonb(input),
            "owner": owner,
            "lease": self.lease + offset,
            "delay": delay + offset,
            "first_step": None,
        }

    @contextlib.asynccontextmanager
    async def transaction(self, run: SagaRun, *, pipeline: bool = False) -> AsyncIterator[db.Conn]:
        """A transaction; if it rolls back, the saga row still has to be created.

        ``pipeline``: see ``db.transaction``; a stale fence then fails at the commit."""
        create, pending = run.create, run.pending
        try:
            with fenced(run):
                async with db.transaction(self.pool, pipeline=pipeline) as conn:
                    yield conn
        except BaseException:
            run.create, run.pending = create, pending
            raise

    @staticmethod
    async def create(conn: db.Conn, run: SagaRun) -> None:
        """Insert the saga row, if its first commit has not done so yet, once its
        precondition holds (in the same transaction)."""
        if run.create is not None:
            if run.precondition is not None:
                await run.precondition(conn, run.data)
            create, run.create = run.create, None
            await db.execute(conn, "insert_saga", create)

    @staticmethod
    def hold(
        run: SagaRun,
        *,
        begin: dict[str, Any] | None = None,
        end: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        """Keep an attempt's begin, end and output to be written by the run's next
        checkpoint, in its statement (so in its transaction, under its fence)."""
        held = run.pending or {"begin": [], "end": [], "data": {}}
        run.pending = {
            "begin": [*held["begin"], *([begin] if begin else [])],
            "end": [*held["end"], *([end] if end else [])],
            "data": {**held["data"], **(data or {})},
        }

    async def checkpoint(
        self,
        conn: db.Conn,
        run: SagaRun,
        *,
        begin: dict[str, Any] | None = None,
        end: dict[str, Any] | None = None,
        next: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        status: SagaStatus | None = None,
        error: dict[str, Any] | None = None,
        undo: list[int] | None = None,
        defer: float | None = None,
        rounds: int | None = None,
    ) -> None:
        """One fenced checkpoint statement, on ``conn``, with what the run holds."""
        await self.create(conn, run)
        begins: dict[str, Any] | list[dict[str, Any]] | None = begin
        ends: dict[str, Any] | list[dict[str, Any]] | None = end
        if run.pending is not None:
            self.hold(run, begin=begin, end=end, data=data)
            held, run.pending = run.pending, None
            begins, ends, data = _one_or_all(held["begin"]), _one_or_all(held["end"]), held["data"]
        row = self.row(
            run.saga_id,
            run.epoch,
            begin=begins,
            end=ends,
            next=next,
            data=data,
            status=status,
            error=error,
            undo=undo,
            defer=defer,
            rounds=rounds,
        )
        with fenced(run):
            await write_rows(conn, [row])

    def row(self, saga_id: str, epoch: int, **args: Any) -> dict[str, Any]:
        """A checkpoint's arguments as a row of ``saga_checkpoints``: plain JSON, the empty
        ones left out (NULL), a finite ``defer`` on the clock and ``HOLD`` as "Infinity"."""
        row: dict[str, Any] = {"saga": saga_id, "epoch": epoch}
        for key in ("begin", "end", "next", "data", "error"):
            if args.get(key):
                row[key] = args[key]
        for key in ("undo", "rounds"):
            if args.get(key) is not None:
                row[key] = args[key]
        if (status := args.get("status")) is not None:
            row["status"] = status.value
        if (defer := args.get("defer")) is not None:
            row["defer"] = "Infinity" if defer == HOLD else defer + self.clock.offset()
        return row

    async def commit(self, run: SagaRun, **args: Any) -> None:
        """One checkpoint, committed with whatever other sagas commit at the same moment
        (group commit, the checkpoints of a batch in one statement); returns once it is
        durable."""
        create, pending = run.create, run.pending
        if create is None and pending is None:
            with fenced(run):
                await self.group.commit_row(
                    "saga_checkpoints", self.row(run.saga_id, run.epoch, **args)
                )
            return

        async def write(conn: db.Conn) -> None:
            run.create, run.pending = create, pending  # as they were, if written again
            await self.checkpoint(conn, run, **args)

        await self.write(run, write)

    async def write(self, run: SagaRun, unit: db.Unit) -> None:
        """Commit ``unit``, writes about ``run``, in the next group commit; a refused fence is
        ``LeaseLostError``, and after a failure the saga row is still to be created."""
        create, pending = run.create, run.pending
        try:
            with fenced(run):
                await self.group.commit(unit)
        except BaseException:
            run.create, run.pending = create, pending
            raise
