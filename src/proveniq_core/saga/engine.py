"""The durable saga executor: run steps in order, checkpoint each, compensate in reverse.

Every saga lives in PostgreSQL. A process owns a saga through a lease (``owner``,
``lease_until``) that it renews while it works; every claim bumps the saga's ``epoch`` and
every checkpoint is fenced on the epoch it was claimed under, so a process that lost its
lease can record nothing (``LeaseLostError``). A saga whose lease expired — its process died
— is claimed by any worker (``FOR UPDATE SKIP LOCKED``) and resumed from its log: completed
steps are never run again; the interrupted step runs again with the same idempotency key,
``f"{saga_id}:{step_index}"``.

A *transactional* step (a ledger write) commits in the same transaction as its checkpoint.
Any other step (a locker command) runs between two commits; the start of the next step is
folded into the commit that finishes the previous one, so a step costs one commit.

``run_at`` makes sagas durable timers: ``schedule`` creates a saga that any worker runs when
it is due, and a step that raises ``Defer`` parks its saga until later. A compensation that
keeps failing is retried in rounds on that timer and, after the last round, the saga ends
``compensation_failed`` with an ops alert.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog

from proveniq_core import db
from proveniq_core.errors import ConflictError, CoreError, LockerTimeoutError
from proveniq_core.observability import metrics
from proveniq_core.ops import alerts

log = structlog.get_logger(__name__)

_CHECKPOINT_ARGS = (
    "saga", "epoch", "begin", "end", "next", "data", "status", "error", "undo",
    "defer", "rounds",
)  # fmt: skip
LEASE_LOST = "PVL01"  # SQLSTATE raised by saga_checkpoint() on a stale epoch


class LeaseLostError(ConflictError):
    """This process no longer holds the saga: its lease expired and another owner claimed it.

    A request that meets it answers 409: another process is finishing the work."""


WriteFn = Callable[[db.Conn], Awaitable[float]]
HOLD = math.inf  # a delay that parks the saga until something wakes it


class Defer(Exception):
    """Raised by a step to park its saga; the step runs again when the saga is next due.

    ``delay`` is in seconds (``HOLD``: until woken by ``wake`` or an operator). ``cause`` is
    the failure that made the step wait, for the caller to report. ``write``, if given, runs
    in the transaction that parks the saga (the partial commit: state, queue entries,
    alerts) and returns the delay, which then replaces ``delay``.
    """

    def __init__(
        self,
        delay: float = HOLD,
        reason: str = "",
        *,
        cause: CoreError | None = None,
        write: WriteFn | None = None,
    ) -> None:
        super().__init__(reason or (str(cause) if cause else f"deferred {delay:g}s"))
        self.delay = delay
        self.cause = cause
        self.write = write


class StepFailedError(Exception):
    """A step's own failure (not a checkpoint's); ``error`` is what the step raised."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(slots=True)
class StepContext:
    """What a step sees: the saga's data so far and, for a transactional step, its connection."""

    saga_id: str
    step_index: int
    step_name: str
    attempt: int
    data: dict[str, Any]
    conn: db.Conn | None = None

    @property
    def idempotency_key(self) -> str:
        return f"{self.saga_id}:{self.step_index}"

    @property
    def tx(self) -> db.Conn:
        if self.conn is None:
            raise RuntimeError(f"step {self.step_name} is not transactional")
        return self.conn


StepFn = Callable[[StepContext], Awaitable[dict[str, Any] | None]]


@dataclass(frozen=True, slots=True)
class Step:
    """One saga step. ``retries`` counts attempts after the first; ``timeout`` is per attempt."""

    name: str
    execute: StepFn
    compensate: StepFn | None = None
    timeout: float = 5.0
    retries: int = 0
    transactional: bool = False
    backoff: float = 0.05


@dataclass(frozen=True, slots=True)
class SagaDefinition:
    name: str
    steps: tuple[Step, ...]

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError(f"saga {self.name!r} has no steps")


@dataclass(slots=True)
class SagaResult:
    """Where a run stopped. ``error`` is the step failure that triggered compensation;
    ``deferred`` is set when the saga was parked on its timer (not finished)."""

    saga_id: str
    status: str
    data: dict[str, Any]
    failed_step: str | None = None
    error: BaseException | None = None
    compensation_errors: list[str] = field(default_factory=list)
    deferred: float | None = None
    deferral: Defer | None = None

    @property
    def ok(self) -> bool:
        return self.status == "completed"


@dataclass(slots=True)
class _Run:
    """One saga as this process drives it, under the epoch of its claim."""

    saga_id: str
    epoch: int
    definition: SagaDefinition
    data: dict[str, Any]
    tenant_id: str | None = None
    rounds: int = 0
    create: dict[str, Any] | None = None  # insert the saga row with the first commit


def error_doc(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, CoreError):
        code = exc.code
    else:
        code = "E_TIMEOUT" if isinstance(exc, TimeoutError) else "E_INTERNAL"
    return {"code": code, "type": type(exc).__name__, "message": str(exc) or type(exc).__name__}


def retryable(exc: BaseException) -> bool:
    if isinstance(exc, CoreError):
        return exc.mode.retryable
    return isinstance(exc, TimeoutError)


def ambiguous(exc: BaseException) -> bool:
    """The step may have taken effect although it failed (no answer in time)."""
    return isinstance(exc, TimeoutError | LockerTimeoutError)


def _log_context(run: _Run) -> dict[str, Any]:
    """The ids a saga's log lines carry: saga_id and, where its data knows them, asset_id,
    locker_ref and (resumed outside its request) the request_id that started it."""
    context: dict[str, Any] = {"saga_id": run.saga_id, "saga": run.definition.name}
    for key, data_key in (("asset_id", "assetId"), ("locker_ref", "lockerRef")):
        if run.data.get(data_key) is not None:
            context[key] = run.data[data_key]
    request_id = run.data.get("requestId")
    if request_id and "request_id" not in structlog.contextvars.get_contextvars():
        context["request_id"] = request_id
    return context


def _attempt_row(index: int, phase: str, attempt: int, name: str) -> dict[str, Any]:
    return {"i": index, "phase": phase, "attempt": attempt, "name": name}


def _end_row(
    row: dict[str, Any], status: str, output: Any = None, error: Any = None
) -> dict[str, Any]:
    return {**row, "status": status, "output": output, "error": error}


async def _call(step: Step, ctx: StepContext) -> dict[str, Any]:
    try:
        async with asyncio.timeout(step.timeout):  # no extra task, unlike wait_for
            result = await step.execute(ctx)
            if ctx.conn is not None:
                # A transactional step's statements are pipelined: their errors are raised
                # at this sync, as the step's own failure, not at the checkpoint's commit.
                await db.sync(ctx.conn)
    except Defer:
        raise
    except psycopg.Error as exc:
        raise StepFailedError(db.translate(exc)) from exc
    except Exception as exc:
        raise StepFailedError(exc) from exc
    return result or {}


@contextlib.contextmanager
def _fenced(run: _Run) -> Iterator[None]:
    """A refused fence (SQLSTATE PVL01) as ``LeaseLostError``, wherever it surfaces: at the
    checkpoint, or at the commit of a pipelined transaction."""
    try:
        yield
    except psycopg.Error as exc:
        if exc.sqlstate == LEASE_LOST:
            raise LeaseLostError(f"saga {run.saga_id}: lease lost (epoch {run.epoch})") from None
        raise


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class SagaEngine:
    """Runs, resumes and schedules sagas on one pool.

    ``owner`` names this process in the lease columns; ``lease`` is how long a claim holds
    without renewal (``keepalive`` renews every third of it). A failing compensation is
    retried ``compensation_rounds`` times in all, ``compensation_retry_base`` seconds apart,
    doubling.
    """

    def __init__(
        self,
        pool: db.Pool,
        *,
        definitions: Iterable[SagaDefinition] = (),
        owner: str | None = None,
        lease: float = 15.0,
        compensation_rounds: int = 5,
        compensation_retry_base: float = 5.0,
    ) -> None:
        self.pool = pool
        self.owner = owner or default_owner()
        self.lease = lease
        self.compensation_rounds = max(1, compensation_rounds)
        self.compensation_retry_base = compensation_retry_base
        self.definitions: dict[str, SagaDefinition] = {}
        self._held: dict[str, int] = {}  # saga id -> epoch, renewed by keepalive
        for definition in definitions:
            self.register(definition)

    def register(self, definition: SagaDefinition) -> None:
        """Make ``definition`` resumable by this engine (by its name)."""
        known = self.definitions.setdefault(definition.name, definition)
        if known is not definition and [s.name for s in known.steps] != [
            s.name for s in definition.steps
        ]:
            raise ValueError(f"saga {definition.name!r} is already registered with other steps")
        metrics.declare_saga(definition.name, [s.name for s in definition.steps])

    # -- starting ---------------------------------------------------------------------------

    async def run(
        self,
        definition: SagaDefinition,
        input: dict[str, Any],
        *,
        saga_id: str | None = None,
        tenant_id: str | None = None,
    ) -> SagaResult:
        """Start a saga now, in this process, and drive it as far as it goes."""
        self.register(definition)
        saga_id = saga_id or str(uuid.uuid4())
        run = _Run(
            saga_id,
            1,
            definition,
            dict(input),
            tenant_id,
            create=self._saga_row(saga_id, definition, input, tenant_id, owner=self.owner),
        )
        first = definition.steps[0]
        self._held[saga_id] = 1
        try:
            if not first.transactional:  # one statement: the saga and its first attempt
                assert run.create is not None
                async with db.connection(self.pool) as conn:
                    await db.execute(conn, "insert_saga", run.create | {"first_step": first.name})
                run.create = None
            return await self._observed(
                run, self._forward(run, 0, 1, begun=not first.transactional)
            )
        finally:
            self._held.pop(saga_id, None)

    async def schedule(
        self,
        definition: SagaDefinition,
        input: dict[str, Any],
        *,
        delay: float = 0.0,
        saga_id: str | None = None,
        tenant_id: str | None = None,
        conn: db.Conn | None = None,
    ) -> str:
        """Create a saga that any worker runs ``delay`` seconds from now (a durable timer).

        Pass ``conn`` to create it inside the caller's transaction, atomically with the state
        it belongs to.
        """
        self.register(definition)
        saga_id = saga_id or str(uuid.uuid4())
        params = self._saga_row(saga_id, definition, input, tenant_id, owner=None, delay=delay)
        if conn is not None:
            await db.execute(conn, "insert_saga", params)
            await db.execute(conn, "notify_sagas")
        else:
            async with db.transaction(self.pool) as tx:
                await db.execute(tx, "insert_saga", params)
                await db.execute(tx, "notify_sagas")
        return saga_id

    def _saga_row(
        self,
        saga_id: str,
        definition: SagaDefinition,
        input: dict[str, Any],
        tenant_id: str | None,
        *,
        owner: str | None,
        delay: float = 0.0,
    ) -> dict[str, Any]:
        return {
            "id": saga_id,
            "name": definition.name,
            "tenant_id": tenant_id,
            "input": db.jsonb(input),
            "owner": owner,
            "lease": self.lease,
            "delay": delay,
            "first_step": None,
        }

    # -- checkpoints ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _tx(self, run: _Run, *, pipeline: bool = False) -> AsyncIterator[db.Conn]:
        """A transaction; if it rolls back, the saga row still has to be created.

        ``pipeline``: see ``db.transaction``; a stale fence then fails at the commit."""
        pending = run.create
        try:
            with _fenced(run):
                async with db.transaction(self.pool, pipeline=pipeline) as conn:
                    yield conn
        except BaseException:
            run.create = pending
            raise

    @contextlib.asynccontextmanager
    async def _commit_scope(self, run: _Run) -> AsyncIterator[db.Conn]:
        """A connection for one checkpoint: autocommit, or a transaction when the saga row
        still has to be created with it."""
        if run.create is None:
            async with db.connection(self.pool) as conn:
                yield conn
        else:
            async with self._tx(run) as conn:
                yield conn

    @staticmethod
    async def _create(conn: db.Conn, run: _Run) -> None:
        """Insert the saga row, if this run's first commit has not done so yet."""
        if run.create is not None:
            create, run.create = run.create, None
            await db.execute(conn, "insert_saga", create)

    async def _checkpoint(
        self,
        conn: db.Conn,
        run: _Run,
        *,
        begin: dict[str, Any] | None = None,
        end: dict[str, Any] | None = None,
        next: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        status: str | None = None,
        error: dict[str, Any] | None = None,
        undo: list[int] | None = None,
        defer: float | None = None,
        rounds: int | None = None,
    ) -> None:
        """One fenced checkpoint statement (see ``saga_checkpoint()`` in the migrations)."""
        await self._create(conn, run)
        params = {
            "saga": run.saga_id,
            "epoch": run.epoch,
            "begin": db.jsonb(begin) if begin else None,
            "end": db.jsonb(end) if end else None,
            "next": db.jsonb(next) if next else None,
            "data": db.jsonb(data) if data else None,
            "status": status,
            "error": db.jsonb(error) if error else None,
            "undo": undo,
            "defer": defer,
            "rounds": rounds,
        }
        with _fenced(run):
            await db.execute(conn, "saga_checkpoint", params)

    # -- driving ----------------------------------------------------------------------------

    async def _step(
        self,
        run: _Run,
        index: int,
        phase: str,
        step: Step,
        attempt: int,
        *,
        begun: bool,
        then: dict[str, Any],
    ) -> dict[str, Any]:
        """Run one step (or its compensation) from ``attempt`` until it succeeds or fails.

        ``begun``: the start of ``attempt`` is committed already. ``then``: checkpoint
        arguments committed with the success (the next step's start, a final status).
        A failed execution is retried only when the error is retryable; a failed
        compensation always is. Raises ``StepFailedError`` with the last error, ``Defer``,
        or — when a checkpoint cannot be written — the database error or ``LeaseLostError``.
        """
        execute = phase == "execute"
        first = attempt
        while True:
            ctx = StepContext(run.saga_id, index, step.name, attempt, dict(run.data))
            row = _attempt_row(index, phase, attempt, step.name)
            try:
                if step.transactional:
                    # The attempt is begun and finished in the step's own transaction: one
                    # checkpoint after the step's writes fences them all (a stale owner's
                    # commit fails and takes the writes with it).
                    async with self._tx(run, pipeline=True) as conn:
                        ctx.conn = conn
                        await self._create(conn, run)
                        out = await _call(step, ctx)
                        await self._checkpoint(
                            conn,
                            run,
                            begin=row,
                            end=_end_row(row, "completed", out),
                            data=out if execute else None,
                            **then,
                        )
                    return out
                if not begun:
                    async with self._commit_scope(run) as conn:
                        await self._checkpoint(conn, run, begin=row)
                out = await _call(step, ctx)
            except Defer as deferral:
                cause = error_doc(deferral.cause) if deferral.cause else {}
                async with self._tx(run) as conn:
                    # Fence first, then the step's own writes, in one transaction.
                    await self._checkpoint(
                        conn,
                        run,
                        begin=row if step.transactional else None,
                        end=_end_row(row, "deferred", error={**cause, "message": str(deferral)}),
                    )
                    if deferral.write is not None:
                        deferral.delay = await deferral.write(conn)
                    await self._checkpoint(conn, run, defer=deferral.delay)
                raise
            except StepFailedError as failure:
                again = attempt - first < step.retries and (not execute or retryable(failure.error))
                async with self._commit_scope(run) as conn:
                    await self._checkpoint(
                        conn,
                        run,
                        begin=row if step.transactional else None,
                        end=_end_row(row, "failed", error=error_doc(failure.error)),
                        next=(
                            _attempt_row(index, phase, attempt + 1, step.name)
                            if again and not step.transactional
                            else None
                        ),
                    )
                if not again:
                    raise
                await asyncio.sleep(step.backoff * 2 ** (attempt - first))
                attempt, begun = attempt + 1, not step.transactional
                continue
            async with self._commit_scope(run) as conn:
                await self._checkpoint(
                    conn,
                    run,
                    end=_end_row(row, "completed", out),
                    data=out if execute else None,
                    **then,
                )
            return out

    def _after(self, run: _Run, phase: str, order: list[int], pos: int) -> dict[str, Any]:
        """What to fold into the commit that finishes ``order[pos]``."""
        if pos + 1 == len(order):
            return {"status": "completed" if phase == "execute" else "compensated"}
        following = run.definition.steps[order[pos + 1]]
        if following.transactional:
            return {}
        return {"next": _attempt_row(order[pos + 1], phase, 1, following.name)}

    async def _forward(self, run: _Run, start: int, attempt: int, *, begun: bool) -> SagaResult:
        steps = run.definition.steps
        order = list(range(len(steps)))
        started = time.perf_counter()
        for index in order[start:]:
            then = self._after(run, "execute", order, index)
            try:
                with metrics.saga_step(run.definition.name, steps[index].name):
                    out = await self._step(
                        run, index, "execute", steps[index], attempt, begun=begun, then=then
                    )
            except StepFailedError as failure:
                return await self._begin_compensation(run, index, failure.error)
            except Defer as deferral:
                return SagaResult(
                    run.saga_id, "running", run.data, deferred=deferral.delay, deferral=deferral
                )
            run.data.update(out)
            attempt, begun = 1, "next" in then
        log.debug(
            "saga_completed",
            saga_id=run.saga_id,
            saga=run.definition.name,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return SagaResult(run.saga_id, "completed", run.data)

    async def _begin_compensation(self, run: _Run, failed: int, exc: Exception) -> SagaResult:
        """Plan the undo — completed steps last first, plus the failed step itself when it
        is a non-transactional one that may have taken effect — and start it."""
        steps = run.definition.steps
        step = steps[failed]
        log.warning("saga_step_failed", saga_id=run.saga_id, step=step.name, error=str(exc))
        undo = [i for i in reversed(range(failed)) if steps[i].compensate is not None]
        if not step.transactional and step.compensate is not None and ambiguous(exc):
            undo.insert(0, failed)
        result = await self._undo(run, undo, exc, step.name)
        result.failed_step = step.name
        return result

    async def _undo(
        self, run: _Run, undo: list[int], exc: Exception, step_name: str | None
    ) -> SagaResult:
        """Record why and what will be undone, then compensate ``undo`` in order; with
        nothing to undo the saga just ends ``failed``."""
        doc = {**error_doc(exc), "step": step_name}
        if not undo:
            async with self._commit_scope(run) as conn:
                await self._checkpoint(conn, run, status="failed", error=doc)
            return SagaResult(run.saga_id, "failed", run.data, error=exc)
        first = run.definition.steps[undo[0]]
        async with self._commit_scope(run) as conn:
            await self._checkpoint(
                conn,
                run,
                status="compensating",
                error=doc,
                undo=undo,
                next=(
                    None
                    if first.transactional
                    else _attempt_row(undo[0], "compensate", 1, first.name)
                ),
            )
        result = await self._backward(run, undo, 1, begun=not first.transactional)
        result.error = exc
        return result

    async def _backward(
        self, run: _Run, undo: list[int], attempt: int, *, begun: bool
    ) -> SagaResult:
        steps = run.definition.steps
        for pos, index in enumerate(undo):
            step = steps[index]
            assert step.compensate is not None
            reverse = Step(
                step.name,
                step.compensate,
                timeout=step.timeout,
                retries=max(step.retries, 2),
                transactional=step.transactional,
                backoff=step.backoff,
            )
            then = self._after(run, "compensate", undo, pos)
            try:
                await self._step(run, index, "compensate", reverse, attempt, begun=begun, then=then)
            except StepFailedError as failure:
                return await self._compensation_round_failed(run, step, failure.error)
            except Defer as deferral:
                return SagaResult(
                    run.saga_id,
                    "compensating",
                    run.data,
                    deferred=deferral.delay,
                    deferral=deferral,
                )
            metrics.saga_compensated(run.definition.name, step.name)
            attempt, begun = 1, "next" in then
        return SagaResult(run.saga_id, "compensated", run.data)

    async def _compensation_round_failed(self, run: _Run, step: Step, exc: Exception) -> SagaResult:
        """Retry the compensation later on the saga's timer; after the last round, give up
        loudly: ``compensation_failed`` and a critical ops alert, in one transaction."""
        rounds = run.rounds + 1
        log.error(
            "saga_compensation_failed",
            saga_id=run.saga_id,
            step=step.name,
            round=rounds,
            of=self.compensation_rounds,
            error=str(exc),
        )
        if rounds < self.compensation_rounds:
            delay = self.compensation_retry_base * 2 ** (rounds - 1)
            async with self._commit_scope(run) as conn:
                await self._checkpoint(conn, run, defer=delay, rounds=rounds)
            return SagaResult(
                run.saga_id,
                "compensating",
                run.data,
                compensation_errors=[step.name],
                deferred=delay,
            )
        async with self._tx(run) as conn:
            await self._checkpoint(conn, run, status="compensation_failed", rounds=rounds)
            await alerts.raise_alert(
                conn,
                code="E_PARTIAL_COMMIT",
                severity="critical",
                message=(
                    f"saga {run.definition.name} {run.saga_id}: compensating step "
                    f"{step.name} failed {rounds} time(s) ({error_doc(exc)['code']}); "
                    "it needs an operator"
                ),
                dedup_key=f"saga:{run.saga_id}:compensation_failed",
                tenant_id=run.tenant_id,
                subject={
                    "sagaId": run.saga_id,
                    "step": step.name,
                    "assetId": run.data.get("assetId"),
                    "lockerRef": run.data.get("lockerRef"),
                    "error": error_doc(exc),
                },
            )
        return SagaResult(
            run.saga_id, "compensation_failed", run.data, compensation_errors=[step.name]
        )

    # -- recovery and timers ----------------------------------------------------------------

    async def claim(self, limit: int, saga_id: str | None = None) -> list[db.Row]:
        """Claim up to ``limit`` due sagas — scheduled, deferred, or whose owner's lease
        expired — under a new epoch; or, with ``saga_id``, that one saga if nobody holds it,
        due or not. Interrupted attempts are marked in the same commit."""
        params = {"owner": self.owner, "lease": self.lease, "limit": limit, "id": saga_id}
        async with db.connection(self.pool) as conn:
            return await db.fetch_all(conn, "claim_sagas", params)

    async def run_now(self, saga_id: str) -> SagaResult | None:
        """Claim one parked saga, due or not, and drive it here; None if another holds it."""
        claimed = await self.claim(1, saga_id)
        return await self.resume(claimed[0]) if claimed else None

    async def wake(self, saga_id: str) -> bool:
        """Make a parked saga due now (any worker takes it); False if it is not parked."""
        async with db.transaction(self.pool) as conn:
            woken = await db.fetch_one(conn, "wake_saga", {"id": saga_id})
            if woken is not None:
                await db.execute(conn, "notify_sagas")
        return woken is not None

    async def cancel(
        self, saga_id: str, cause: CoreError, *, claimed: db.Row | None = None
    ) -> SagaResult | None:
        """Compensate a parked saga now (an operator's cancel): undo its completed steps,
        last first, and the waiting step too unless the device definitely refused it.
        None if another process holds the saga or it is not parked. ``claimed``: the saga
        as the caller already claimed it (``claim_sagas``, in the caller's transaction)."""
        if claimed is None:
            rows = await self.claim(1, saga_id)
            if not rows:
                return None
            claimed = rows[0]
        saga = claimed
        definition = self.definitions[saga["name"]]
        run = _Run(saga_id, saga["epoch"], definition, dict(saga["data"]), saga["tenant_id"])
        if saga["status"] != "running":
            return await self.resume(saga)
        async with db.connection(self.pool) as conn:
            rows = await db.fetch_all(conn, "get_saga_steps", {"saga_id": saga_id})
        done = {
            r["step_index"] for r in rows if r["phase"] == "execute" and r["status"] == "completed"
        }
        last = {r["step_index"]: r for r in rows if r["phase"] == "execute"}
        steps = definition.steps
        waiting = next((i for i in range(len(steps)) if i not in done), None)
        undo = [i for i in sorted(done, reverse=True) if steps[i].compensate is not None]
        if waiting is not None and waiting in last:
            step, code = steps[waiting], (last[waiting]["error"] or {}).get("code")
            if not step.transactional and step.compensate and code != "E_LOCKER_HARDWARE":
                undo.insert(0, waiting)
        self._held[saga_id] = run.epoch
        try:
            return await self._observed(
                run,
                self._undo(run, undo, cause, steps[waiting].name if waiting is not None else None),
            )
        finally:
            self._held.pop(saga_id, None)

    async def resume(self, saga: db.Row) -> SagaResult:
        """Drive a claimed saga on from its log."""
        saga_id = str(saga["id"])
        definition = self.definitions.get(saga["name"])
        if definition is None:  # another process knows it: hand it back after a lease
            log.error("saga_unknown", saga_id=saga_id, saga=saga["name"])
            async with db.connection(self.pool) as conn:
                await db.execute(
                    conn,
                    "saga_checkpoint",
                    dict.fromkeys(_CHECKPOINT_ARGS)
                    | {"saga": saga_id, "epoch": saga["epoch"], "defer": self.lease},
                )
            return SagaResult(saga_id, saga["status"], dict(saga["data"]), deferred=self.lease)
        run = _Run(
            saga_id,
            saga["epoch"],
            definition,
            dict(saga["data"]),
            saga["tenant_id"],
            saga["rounds"],
        )
        self._held[saga_id] = run.epoch
        try:
            return await self._observed(run, self._resume(run, saga["status"], saga["undo"] or []))
        finally:
            self._held.pop(saga_id, None)

    @staticmethod
    async def _observed(run: _Run, drive: Awaitable[SagaResult]) -> SagaResult:
        """Drive a saga and observe the run: its time and where it stopped (an end, deferred,
        or error when it raised: it will be resumed). Log lines meanwhile carry its ids."""
        started = time.perf_counter()
        outcome = "error"
        try:
            with structlog.contextvars.bound_contextvars(**_log_context(run)):
                result = await drive
            outcome = "deferred" if result.deferred is not None else result.status
            return result
        finally:
            metrics.saga_run(run.definition.name, outcome, time.perf_counter() - started)

    async def _resume(self, run: _Run, status: str, undo: list[int]) -> SagaResult:
        async with db.connection(self.pool) as conn:
            log_rows = await db.fetch_all(conn, "get_saga_steps", {"saga_id": run.saga_id})
        last: dict[tuple[int, str], int] = {}
        done: set[tuple[int, str]] = set()
        for r in log_rows:
            key = (r["step_index"], r["phase"])
            last[key] = max(last.get(key, 0), r["attempt"])
            if r["status"] == "completed":
                done.add(key)
        log.info("saga_resumed", saga_id=run.saga_id, status=status, epoch=run.epoch)
        if status == "running":
            n = len(run.definition.steps)
            start = next((i for i in range(n) if (i, "execute") not in done), n)
            if start == n:
                async with self._commit_scope(run) as conn:
                    await self._checkpoint(conn, run, status="completed")
                return SagaResult(run.saga_id, "completed", run.data)
            return await self._forward(run, start, last.get((start, "execute"), 0) + 1, begun=False)
        remaining = [i for i in undo if (i, "compensate") not in done]
        if not remaining:
            async with self._commit_scope(run) as conn:
                await self._checkpoint(conn, run, status="compensated")
            return SagaResult(run.saga_id, "compensated", run.data)
        first = remaining[0]
        return await self._backward(
            run, remaining, last.get((first, "compensate"), 0) + 1, begun=False
        )

    async def run_due(self, limit: int = 100) -> list[SagaResult]:
        """Claim what is due and drive each saga as far as it goes; for tests and tools."""
        claimed = await self.claim(limit)
        return list(await asyncio.gather(*(self.resume(row) for row in claimed)))

    async def _resume_logged(self, row: db.Row) -> None:
        try:
            await self.resume(row)
        except LeaseLostError as exc:
            log.warning("saga_lease_lost", saga_id=str(row["id"]), error=str(exc))
        except Exception:
            log.exception("saga_resume_failed", saga_id=str(row["id"]))

    async def next_due_in(self) -> float | None:
        """Seconds until the next parked saga is due (negative when overdue), or None."""
        async with db.connection(self.pool) as conn:
            row = await db.fetch_one(conn, "next_saga_due")
        return None if row is None or row["seconds"] is None else float(row["seconds"])

    async def work(
        self, waker: db.Waker | None = None, *, concurrency: int = 32, poll: float = 1.0
    ) -> None:
        """Forever: claim due sagas and drive up to ``concurrency`` of them at once.

        Woken by ``NOTIFY`` (topic ``sagas``) when a saga is scheduled or parked; polls every
        ``poll`` seconds for expired leases, and sleeps no longer than the next timer.
        """
        tasks: set[asyncio.Task[None]] = set()
        while True:
            free = concurrency - len(tasks)
            claimed: list[db.Row] = []
            wait = poll
            try:
                if free > 0:
                    claimed = await self.claim(free)
                    if len(claimed) < free:  # about to sleep: no longer than the next timer
                        due = await self.next_due_in()
                        if due is not None:
                            wait = min(poll, max(due, 0.0) + 0.005)
            except CoreError as exc:
                log.warning("saga_claim_failed", error=str(exc))
            for row in claimed:
                task = asyncio.create_task(self._resume_logged(row), name=f"saga-{row['id']}")
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if claimed and len(claimed) == free:
                await asyncio.sleep(0)
                continue
            if free <= 0:
                await asyncio.wait(tasks, timeout=poll, return_when=asyncio.FIRST_COMPLETED)
            elif waker is not None:
                await waker.wait("sagas", wait)
            else:
                await asyncio.sleep(wait)

    async def keepalive(self) -> None:
        """Forever: renew the leases of the sagas this process is driving."""
        while True:
            await asyncio.sleep(self.lease / 3)
            await self.renew()

    async def renew(self) -> int:
        """Renew every lease this process holds; returns how many were still ours."""
        if not self._held:
            return 0
        held = dict(self._held)
        try:
            async with db.connection(self.pool) as conn:
                rows = await db.fetch_all(
                    conn,
                    "renew_leases",
                    {"lease": self.lease, "ids": list(held), "epochs": list(held.values())},
                )
        except CoreError as exc:
            log.warning("saga_lease_renewal_failed", held=len(held), error=str(exc))
            return 0
        if len(rows) < len(held):
            log.warning("saga_leases_lost", held=len(held), renewed=len(rows))
        return len(rows)
