"""The durable saga executor: do what the planner says, checkpointing each step, under a lease.

Every saga lives in PostgreSQL. A process owns a saga through a lease (``owner``,
``lease_until``) that it renews while it works; every claim bumps the saga's ``epoch`` and
every checkpoint is fenced on the epoch it was claimed under, so a process that lost its
lease can record nothing (``LeaseLostError``). A saga whose lease expired — its process died
— is claimed by any worker (``FOR UPDATE SKIP LOCKED``) and resumed from its log: completed
steps are never run again; the interrupted step runs again with the same idempotency key,
``f"{saga_id}:{step_index}"``.

A *transactional* step (a ledger write) commits in the same transaction as its checkpoint.
Any other step (a call to another system) runs between two commits; the start of the next
step is folded into the commit that finishes the previous one, so a step costs one commit.
When a transactional step follows, the end of the call is written in that step's
transaction instead (or with whatever checkpoint comes first): it costs no commit of its own.
A crash before that commit loses the call's outcome, as a crash during the call would, and
the call runs again under the same idempotency key. Those commits of a call's step are
shared with other sagas' (group commit, see ``_journal``): under load one commit carries the
checkpoints of many sagas.

``run_at`` makes sagas durable timers: ``schedule`` creates a saga that any worker runs when
it is due, and a step that raises ``Defer`` parks its saga until later. A compensation that
keeps failing is retried in rounds on that timer and, after the last round, the saga ends
``compensation_failed`` with an ops alert.

What to run or undo next is decided by ``planner`` from the saga's log; this module does it,
and ``_journal`` writes what happened.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterable
from typing import Any

import psycopg
import structlog

from proveniq_core import db
from proveniq_core.errors import CoreError
from proveniq_core.ledger import alerts
from proveniq_core.observability import metrics, tracing
from proveniq_core.resilience.backoff import Backoff
from proveniq_core.saga import planner
from proveniq_core.saga._journal import (
    Journal,
    Precondition,
    SagaRun,
    attempt_row,
    end_row,
    phase_of,
    write_rows,
)
from proveniq_core.saga.clock import SYSTEM, Clock
from proveniq_core.saga.model import (
    Attempt,
    AttemptStatus,
    Defer,
    LeaseLostError,
    Phase,
    SagaDefinition,
    SagaResult,
    SagaStatus,
    Step,
    StepContext,
    StepError,
    error_doc,
    retryable,
)
from proveniq_core.saga.planner import Finish, Park, Run, SagaState, Undo

__all__ = ["SagaEngine", "default_owner"]

log = structlog.get_logger(__name__)


class _StepFailedError(Exception):
    """A step's own failure (not a checkpoint's); ``error`` is what the step raised."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _compensation(step: Step) -> Step:
    """The step that undoes ``step``: its compensation, retried at least twice per round."""
    assert step.compensate is not None
    return Step(
        step.name,
        step.compensate,
        timeout=step.timeout,
        retries=max(step.retries, 2),
        transactional=step.transactional,
        backoff=step.backoff,
    )


async def _call(step: Step, ctx: StepContext, *, sync: bool = True) -> dict[str, Any]:
    """Run ``step``; its failure as ``_StepFailedError``. ``sync=False``: a transactional
    step's pipelined errors are left to surface later (at the commit)."""
    try:
        async with asyncio.timeout(step.timeout):  # no extra task, unlike wait_for
            result = await step.execute(ctx)
            if sync and ctx.conn is not None:
                # A transactional step's statements are pipelined: their errors are raised
                # at this sync, as the step's own failure, not at the checkpoint's commit.
                await db.sync(ctx.conn)
    except Defer:
        raise
    except psycopg.Error as exc:
        raise _StepFailedError(db.translate(exc)) from exc
    except Exception as exc:
        raise _StepFailedError(exc) from exc
    return result or {}


def _log_context(run: SagaRun) -> dict[str, Any]:
    """The ids a saga's log lines carry: its own, and those its definition names from its
    data, unless the caller bound them already (a request's own request_id)."""
    bound = structlog.contextvars.get_contextvars()
    extra = run.definition.log_context(run.data)
    return {"saga_id": run.saga_id, "saga": run.definition.name} | {
        key: value for key, value in extra.items() if key not in bound
    }


def _span_attributes(run: SagaRun) -> dict[str, Any]:
    """A saga's span attributes: its ids and those its definition names (``asset_id`` is
    ``asset.id``); none when tracing is off."""
    if not tracing.enabled():
        return {}
    extra = run.definition.log_context(run.data)
    return {"saga.id": run.saga_id, "saga.name": run.definition.name} | {
        key.replace("_", "."): value for key, value in extra.items()
    }


def _traced(input: dict[str, Any]) -> dict[str, Any]:
    """A new saga's data, with the trace context it starts in (kept for its resumption)."""
    if not tracing.enabled() or tracing.TRACEPARENT in input:
        return input
    current = tracing.traceparent()
    return input if current is None else {**input, tracing.TRACEPARENT: current}


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class SagaEngine:
    """Runs, resumes and schedules sagas on one pool.

    ``owner`` names this process in the lease columns; ``lease`` is how long a claim holds
    without renewal (``keepalive`` renews every third of it). A failing compensation is
    retried ``compensation_rounds`` times in all, ``compensation_retry_base`` seconds apart,
    doubling. ``clock`` is the engine's time (see ``saga.clock``).
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
        clock: Clock = SYSTEM,
    ) -> None:
        self.pool = pool
        self.owner = owner or default_owner()
        self.lease = lease
        self.compensation_rounds = max(1, compensation_rounds)
        self.compensation_backoff = Backoff(compensation_retry_base)
        self.clock = clock
        self.journal = Journal(pool, clock, lease)
        self.definitions: dict[str, SagaDefinition] = {}
        self._held: dict[str, int] = {}  # saga id -> epoch, renewed by keepalive
        self._backlog = False  # the worker's last claim found as many due sagas as it asked
        self._background: set[asyncio.Task[SagaResult]] = set()
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
        precondition: Precondition | None = None,
    ) -> SagaResult:
        """Start a saga now, in this process, and drive it as far as it goes.

        ``precondition(conn, data)`` runs in the saga's first transaction, before its row is
        written: if it raises, nothing of the saga is written and the error propagates. What
        it adds to ``data`` is there for the first attempts in this process, never stored.
        """
        self.register(definition)
        saga_id = saga_id or str(uuid.uuid4())
        input = _traced(input)
        run = SagaRun(
            saga_id,
            1,
            definition,
            dict(input),
            SagaState(SagaStatus.RUNNING),
            tenant_id,
            create=self.journal.saga_row(saga_id, definition, input, tenant_id, owner=self.owner),
            precondition=precondition,
        )
        first = definition.steps[0]
        self._held[saga_id] = 1
        try:
            if not first.transactional:  # one commit: the saga and its first attempt
                assert run.create is not None
                create = run.create | {"first_step": first.name}

                async def insert(conn: db.Conn) -> None:
                    if precondition is not None:
                        await precondition(conn, run.data)
                    await db.execute(conn, "insert_saga", create)

                await self.journal.write(run, insert)
                run.create = None
            return await self._observed(run, self._drive(run, begun=not first.transactional))
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
        input = _traced(input)
        params = self.journal.saga_row(
            saga_id, definition, input, tenant_id, owner=None, delay=delay
        )
        if conn is not None:
            await db.execute(conn, "insert_saga", params)
            await db.execute(conn, "notify_sagas")
        else:
            async with db.transaction(self.pool) as tx:
                await db.execute(tx, "insert_saga", params)
                await db.execute(tx, "notify_sagas")
        return saga_id

    # -- driving ----------------------------------------------------------------------------

    def _fold(self, run: SagaRun, after: Run | Undo | Finish) -> dict[str, Any]:
        """What to fold into the commit that finishes a step, given what follows it: the
        saga's end, or the start of the next step (a transactional one starts in its own)."""
        if isinstance(after, Finish):
            return {"status": after.status}
        step = run.definition.steps[after.index]
        if step.transactional:
            return {}
        return {"next": attempt_row(after.index, phase_of(after), after.attempt, step.name)}

    async def _attempts(
        self, run: SagaRun, action: Run | Undo, *, begun: bool, then: dict[str, Any]
    ) -> dict[str, Any]:
        """Run one step (or its compensation) from ``action.attempt`` until it succeeds or
        fails, recording each attempt in the run's log once its checkpoint is committed.

        ``begun``: the start of the first attempt is committed already. ``then``: checkpoint
        arguments committed with the success (the next step's start, a final status).
        A failed execution is retried only when the error is retryable; a failed
        compensation always is. Raises ``_StepFailedError`` with the last error, ``Defer``,
        or — when a checkpoint cannot be written — the database error or ``LeaseLostError``.
        """
        execute, phase, index = isinstance(action, Run), phase_of(action), action.index
        step = run.definition.steps[index]
        step = step if execute else _compensation(step)
        backoff = Backoff(step.backoff)
        first = attempt = action.attempt
        while True:
            ctx = StepContext(run.saga_id, index, step.name, attempt, dict(run.data))
            row = attempt_row(index, phase, attempt, step.name)
            attributes = {
                "saga.step": step.name,
                "saga.step.phase": phase.value,
                "saga.step.attempt": attempt,
                **_span_attributes(run),
            }
            with tracing.span(f"saga.step {step.name}", attributes, errors=False) as span:
                try:
                    if step.transactional:
                        # The attempt is begun and finished in the step's own transaction: one
                        # checkpoint after the step's writes fences them all (a stale owner's
                        # commit fails and takes the writes with it).
                        async with self.journal.transaction(run, pipeline=True) as conn:
                            out = await self._step_in(
                                conn, run, step, ctx, row, data=execute, then=then
                            )
                        run.record(action, attempt, AttemptStatus.COMPLETED)
                        span.set_attribute("saga.step.outcome", "completed")
                        return out
                    if not begun:
                        await self.journal.commit(run, begin=row)
                    out = await _call(step, ctx)
                except Defer as deferral:
                    cause = error_doc(deferral.cause) if deferral.cause else {}
                    async with self.journal.transaction(run) as conn:
                        # Fence first, then the step's own writes, in one transaction.
                        await self.journal.checkpoint(
                            conn,
                            run,
                            begin=row if step.transactional else None,
                            end=end_row(
                                row,
                                AttemptStatus.DEFERRED,
                                error={**cause, "message": str(deferral)},
                            ),
                        )
                        if deferral.write is not None:
                            deferral.delay = await deferral.write(conn)
                        await self.journal.checkpoint(conn, run, defer=deferral.delay)
                    span.set_attribute("saga.step.outcome", "deferred")
                    if deferral.cause is not None:
                        span.set_attribute("error.code", deferral.cause.code)
                    raise
                except _StepFailedError as failure:
                    again = attempt - first < step.retries and (
                        not execute or retryable(failure.error)
                    )
                    await self.journal.commit(
                        run,
                        begin=row if step.transactional else None,
                        end=end_row(row, AttemptStatus.FAILED, error=error_doc(failure.error)),
                        next=(
                            attempt_row(index, phase, attempt + 1, step.name)
                            if again and not step.transactional
                            else None
                        ),
                    )
                    run.record(action, attempt, AttemptStatus.FAILED, StepError.of(failure.error))
                    span.set_attribute("saga.step.outcome", "failed")
                    tracing.failed(span, error_doc(failure.error)["code"], str(failure.error))
                    if not again:
                        raise
                else:
                    done = {
                        "end": end_row(row, AttemptStatus.COMPLETED, out),
                        "data": out if execute else None,
                        **then,
                    }
                    if then:
                        await self.journal.commit(run, **done)
                    else:  # a transactional step follows: this end commits in its checkpoint
                        self.journal.hold(run, end=done["end"], data=done["data"])
                    run.record(action, attempt, AttemptStatus.COMPLETED)
                    span.set_attribute("saga.step.outcome", "completed")
                    return out
            # A failed attempt to retry: the wait is between the attempts' spans.
            await self.clock.sleep(backoff.delay(attempt - first))
            attempt, begun = attempt + 1, not step.transactional

    async def _drive(self, run: SagaRun, *, begun: bool) -> SagaResult:
        """Do what the planner says, step by step, until the saga ends or parks.

        ``begun``: the start of the first step's attempt is committed already."""
        definition, started = run.definition, time.perf_counter()
        action = planner.next_action(definition, run.state)
        while not isinstance(action, Finish):
            step = definition.steps[action.index]
            done = Attempt(action.index, phase_of(action), action.attempt, AttemptStatus.COMPLETED)
            after = planner.next_action(definition, run.state.record(done))
            then = self._fold(run, after)
            if (pair := self._pair(run, action, after)) is not None:
                second, beyond = pair
                if isinstance(action, Run) and await self._together(
                    run, action, second, then=self._fold(run, beyond)
                ):
                    action, after = second, beyond
                    then = self._fold(run, after)
                    if isinstance(after, Finish):
                        return self._finished(run, after, started)
                    action, begun = after, "next" in then
                    continue
            try:
                if isinstance(action, Run):
                    with metrics.saga_step(definition.name, step.name):
                        out = await self._attempts(run, action, begun=begun, then=then)
                    run.data.update(out)
                else:
                    await self._attempts(run, action, begun=begun, then=then)
                    metrics.saga_compensated(definition.name, step.name)
            except _StepFailedError as failure:
                if isinstance(action, Undo):
                    return await self._compensation_round_failed(run, step, failure.error)
                log.warning(
                    "saga_step_failed",
                    saga_id=run.saga_id,
                    step=step.name,
                    error=str(failure.error),
                )
                result = await self._stop(run, failure.error, step.name)
                result.failed_step = step.name
                return result
            except Defer as deferral:
                return SagaResult(
                    run.saga_id,
                    run.state.status,
                    run.data,
                    deferred=deferral.delay,
                    deferral=deferral,
                )
            if isinstance(after, Finish):
                return self._finished(run, after, started)
            action, begun = after, "next" in then
        # Resumed with nothing left to do: only the end is still to be recorded.
        await self.journal.commit(run, status=action.status)
        return SagaResult(run.saga_id, action.status, run.data)

    async def _step_in(
        self,
        conn: db.Conn,
        run: SagaRun,
        step: Step,
        ctx: StepContext,
        row: dict[str, Any],
        *,
        data: bool = True,
        then: dict[str, Any],
        sync: bool = True,
        hold: bool = False,
    ) -> dict[str, Any]:
        """A ledger step's attempt on ``conn``, in its transaction: its writes, then the one
        checkpoint that begins and ends it (with ``then``), after the saga row if not in yet.
        ``sync``: see ``_call``. ``hold``: the checkpoint is left to the next step's, in the
        same transaction."""
        ctx.conn = conn
        await self.journal.create(conn, run)
        ctx.data.update(run.data)  # with what a precondition added
        out = await _call(step, ctx, sync=sync)
        begin, end = row, end_row(row, AttemptStatus.COMPLETED, out)
        if hold:
            self.journal.hold(run, begin=begin, end=end, data=out if data else None)
        else:
            await self.journal.checkpoint(
                conn, run, begin=begin, end=end, data=out if data else None, **then
            )
        return out

    @staticmethod
    def _finished(run: SagaRun, end: Finish, started: float) -> SagaResult:
        if end.status is SagaStatus.COMPLETED:
            log.debug(
                "saga_completed",
                saga_id=run.saga_id,
                saga=run.definition.name,
                ms=round((time.perf_counter() - started) * 1000, 1),
            )
        return SagaResult(run.saga_id, end.status, run.data)

    def _pair(
        self, run: SagaRun, action: Run | Undo, after: Run | Undo | Finish
    ) -> tuple[Run, Run | Undo | Finish] | None:
        """The step to run with ``action`` in one transaction, and what follows the two; None
        unless both are ledger steps run forwards, the second right after the first."""
        steps = run.definition.steps
        if not (
            isinstance(action, Run)
            and isinstance(after, Run)
            and after.index == action.index + 1
            and steps[action.index].transactional
            and steps[after.index].transactional
        ):
            return None
        done = [
            Attempt(a.index, Phase.EXECUTE, a.attempt, AttemptStatus.COMPLETED)
            for a in (action, after)
        ]
        return after, planner.next_action(run.definition, run.state.record(done[0]).record(done[1]))

    async def _together(
        self, run: SagaRun, first: Run, second: Run, *, then: dict[str, Any]
    ) -> bool:
        """Run two consecutive ledger steps in one transaction, checkpointed together by one
        statement: one commit instead of two. True when both completed. If either does not
        (it fails, defers, or a retry would be needed), nothing of either is kept and False
        says to run them one by one, as if this had not been tried. The steps' pipelined errors are
        read only at the commit (no round trip after each step): which step failed is found
        out by that one-by-one run. A lost fence or an unreachable database is raised."""
        definition = run.definition
        outs: list[dict[str, Any]] = []
        data = dict(run.data)
        try:
            async with self.journal.transaction(run, pipeline=True) as conn:
                for action in (first, second):
                    step = definition.steps[action.index]
                    ctx = StepContext(run.saga_id, action.index, step.name, action.attempt, data)
                    row = attempt_row(action.index, Phase.EXECUTE, action.attempt, step.name)
                    attributes = {
                        "saga.step": step.name,
                        "saga.step.phase": Phase.EXECUTE.value,
                        "saga.step.attempt": action.attempt,
                        **_span_attributes(run),
                    }
                    with (
                        metrics.saga_step(definition.name, step.name),
                        tracing.span(f"saga.step {step.name}", attributes, errors=False) as span,
                    ):
                        out = await self._step_in(
                            conn,
                            run,
                            step,
                            ctx,
                            row,
                            then=then if action is second else {},
                            sync=False,
                            hold=action is first,
                        )
                        span.set_attribute("saga.step.outcome", "completed")
                    data = {**ctx.data, **out}
                    outs.append(out)
        except (_StepFailedError, Defer):
            return False
        except LeaseLostError:
            raise
        except Exception as exc:  # a step's statement, failing at the commit
            if db.is_ledger_down(exc):
                raise
            return False
        for action, out in zip((first, second), outs, strict=True):
            run.record(action, action.attempt, AttemptStatus.COMPLETED)
            run.data.update(out)
        return True

    async def _stop(self, run: SagaRun, exc: BaseException, step_name: str | None) -> SagaResult:
        """Go no further forwards: record why and the undo plan, then compensate; with
        nothing to undo the saga just ends ``failed``."""
        doc = {**error_doc(exc), "step": step_name}
        run.state = planner.stop(run.definition, run.state)
        if run.state.status is SagaStatus.FAILED:
            await self.journal.commit(run, status=SagaStatus.FAILED, error=doc)
            return SagaResult(run.saga_id, SagaStatus.FAILED, run.data, error=exc)
        then = self._fold(run, planner.next_action(run.definition, run.state))
        await self.journal.commit(
            run, status=SagaStatus.COMPENSATING, error=doc, undo=list(run.state.undo), **then
        )
        result = await self._drive(run, begun="next" in then)
        result.error = exc
        return result

    async def _compensation_round_failed(
        self, run: SagaRun, step: Step, exc: Exception
    ) -> SagaResult:
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
        then = planner.after_failed_round(
            rounds, self.compensation_rounds, self.compensation_backoff
        )
        if isinstance(then, Park):
            await self.journal.commit(run, defer=then.delay, rounds=rounds)
            return SagaResult(
                run.saga_id,
                SagaStatus.COMPENSATING,
                run.data,
                compensation_errors=[step.name],
                deferred=then.delay,
            )
        async with self.journal.transaction(run) as conn:
            await self.journal.checkpoint(conn, run, status=then.status, rounds=rounds)
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
                    **run.definition.alert_subject(run.data),
                    "error": error_doc(exc),
                },
            )
        return SagaResult(run.saga_id, then.status, run.data, compensation_errors=[step.name])

    # -- recovery and timers ----------------------------------------------------------------

    async def claim(self, limit: int, saga_id: str | None = None) -> list[db.Row]:
        """Claim up to ``limit`` due sagas — scheduled, deferred, or whose owner's lease
        expired — under a new epoch; or, with ``saga_id``, that one saga if nobody holds it,
        due or not. Interrupted attempts are marked in the same commit."""
        async with db.connection(self.pool) as conn:
            return await db.fetch_all(conn, "claim_sagas", self._claim_params(limit, saga_id))

    async def claim_in(self, conn: db.Conn, saga_id: str) -> db.Row | None:
        """Claim one saga, due or not, inside the caller's transaction, so the claim
        commits (or rolls back) with the caller's change; None if another process holds it."""
        return await db.fetch_one(conn, "claim_sagas", self._claim_params(1, saga_id))

    def _claim_params(self, limit: int, saga_id: str | None) -> dict[str, Any]:
        offset = self.clock.offset()
        return {
            "owner": self.owner,
            "lease": self.lease + offset,
            "offset": offset,
            "limit": limit,
            "id": saga_id,
        }

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
        """Compensate a parked saga now (an operator's cancel), by the same undo plan as a
        failure: its completed steps, last first, and the waiting step too when it may
        have taken effect. None if another process holds the saga or it is not parked.
        ``claimed``: the saga as the caller already claimed it (``claim_in``, in the
        caller's transaction)."""
        if claimed is None:
            rows = await self.claim(1, saga_id)
            if not rows:
                return None
            claimed = rows[0]
        return await self.compensate(claimed, cause)

    async def compensate(self, saga: db.Row, cause: CoreError) -> SagaResult:
        """Compensate a saga the caller claimed (``claim_in``), as ``cancel`` does."""
        if saga["status"] != SagaStatus.RUNNING:
            return await self.resume(saga)
        run = self._claimed(saga, self.definitions[saga["name"]])
        return await self._held_while(run, self._cancel(run, cause))

    async def _cancel(self, run: SagaRun, cause: CoreError) -> SagaResult:
        waiting = planner.next_action(run.definition, run.state)
        name = run.definition.steps[waiting.index].name if isinstance(waiting, Run) else None
        return await self._stop(run, cause, name)

    async def resume(self, saga: db.Row) -> SagaResult:
        """Drive a claimed saga on from its log."""
        saga_id = str(saga["id"])
        definition = self.definitions.get(saga["name"])
        if definition is None:  # another process knows it: hand it back after a lease
            log.error("saga_unknown", saga_id=saga_id, saga=saga["name"])
            async with db.connection(self.pool) as conn:
                await write_rows(conn, [self.journal.row(saga_id, saga["epoch"], defer=self.lease)])
            return SagaResult(
                saga_id, SagaStatus(saga["status"]), dict(saga["data"]), deferred=self.lease
            )
        run = self._claimed(saga, definition)
        return await self._held_while(run, self._resume(run))

    @staticmethod
    def _claimed(saga: db.Row, definition: SagaDefinition) -> SagaRun:
        """The run of a saga as ``claim_sagas`` returned it, with its step log."""
        state = SagaState(
            SagaStatus(saga["status"]),
            tuple(Attempt.from_row(step) for step in saga["steps"]),
            tuple(saga["undo"] or ()),
        )
        return SagaRun(
            str(saga["id"]),
            saga["epoch"],
            definition,
            dict(saga["data"]),
            state,
            saga["tenant_id"],
            saga["rounds"],
        )

    async def _held_while(self, run: SagaRun, drive: Awaitable[SagaResult]) -> SagaResult:
        """Await ``drive``, observed, with the run's lease renewed meanwhile."""
        self._held[run.saga_id] = run.epoch
        try:
            return await self._observed(run, drive)
        finally:
            self._held.pop(run.saga_id, None)

    async def _resume(self, run: SagaRun) -> SagaResult:
        log.info(
            "saga_resumed", saga_id=run.saga_id, status=run.state.status.value, epoch=run.epoch
        )
        return await self._drive(run, begun=False)

    @staticmethod
    async def _observed(run: SagaRun, drive: Awaitable[SagaResult]) -> SagaResult:
        """Drive a saga and observe the run: its time and where it stopped (an end, deferred,
        or error when it raised: it will be resumed). Log lines meanwhile carry its ids."""
        started = time.perf_counter()
        outcome = "error"
        # A resumed saga continues the trace it started in, in whichever process resumes it.
        parent = tracing.context_of(run.data.get(tracing.TRACEPARENT))
        try:
            with (
                tracing.span(
                    f"saga {run.definition.name}", _span_attributes(run), parent=parent
                ) as span,
                structlog.contextvars.bound_contextvars(**_log_context(run)),
            ):
                result = await drive
                outcome = "deferred" if result.deferred is not None else str(result.status)
                span.set_attribute("saga.outcome", outcome)
            return result
        finally:
            if run.create is None:  # never written (a failed precondition, say): no run
                metrics.saga_run(run.definition.name, outcome, time.perf_counter() - started)

    # -- bounded waits -----------------------------------------------------------------------

    def start(self, drive: Awaitable[SagaResult]) -> asyncio.Task[SagaResult]:
        """Drive a claimed saga (``resume``, ``cancel``) in this process's background: it
        runs to where it stops however long its steps take, even when whoever started it
        stops waiting (``within``); ``close`` cancels what is left, and the saga's lease
        then lets another process resume it."""
        task = asyncio.ensure_future(drive)
        self._background.add(task)
        task.add_done_callback(self._background_done)
        return task

    @staticmethod
    async def within(task: asyncio.Task[SagaResult], wait: float) -> SagaResult | None:
        """The saga's result if it stops within ``wait`` seconds (its error raised), else
        None: it goes on in the background."""
        done, _ = await asyncio.wait({task}, timeout=wait)
        return task.result() if done else None

    def _background_done(self, task: asyncio.Task[SagaResult]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            level = log.warning if isinstance(exc, LeaseLostError | CoreError) else log.error
            level("saga_background_run_failed", error=repr(exc))

    async def close(self) -> None:
        """Cancel the background runs (their sagas resume elsewhere after a lease)."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    # -- workers ----------------------------------------------------------------------------

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
        if row is None or row["seconds"] is None:
            return None
        return float(row["seconds"]) - self.clock.offset()

    async def work(
        self, waker: db.Waker | None = None, *, concurrency: int = 32, poll: float = 1.0
    ) -> None:
        """Forever: claim due sagas and drive up to ``concurrency`` of them at once.

        Woken by ``NOTIFY`` (topic ``sagas``) when a saga is scheduled or parked; polls every
        ``poll`` seconds for expired leases, and sleeps no longer than the next timer.
        """

        async def due(limit: int) -> AsyncIterator[db.Row]:
            rows = await self.claim(limit)  # one statement claims the whole batch
            self._backlog = len(rows) == limit
            for row in rows:
                yield row

        try:
            await db.claim_loop(
                due,
                self._resume_logged,
                concurrency=concurrency,
                waker=waker,
                topic="sagas",
                poll=poll,
                name="saga_worker",
                next_due=self.next_due_in,
            )
        finally:
            self._backlog = False

    def backlogged(self) -> bool:
        """Whether this process's worker has a backlog of due sagas: its last claim found as
        many as it had room for (parked registrations retried after an outage, say). Other
        work yields to it until a claim finds fewer."""
        return self._backlog

    async def keepalive(self) -> None:
        """Forever: renew the leases of the sagas this process is driving."""
        while True:
            await self.clock.sleep(self.lease / 3)
            await self.renew()

    async def renew(self) -> int:
        """Renew every lease this process holds; returns how many were still ours."""
        if not self._held:
            return 0
        held = dict(self._held)
        params = {
            "lease": self.lease + self.clock.offset(),
            "ids": list(held),
            "epochs": list(held.values()),
        }
        try:
            async with db.connection(self.pool) as conn:
                rows = await db.fetch_all(conn, "renew_leases", params)
        except CoreError as exc:
            log.warning("saga_lease_renewal_failed", held=len(held), error=str(exc))
            return 0
        taken = {str(r["id"]) for r in rows if r["taken"]}
        # Claimed by another owner and still driven here: this process learns it was lost
        # at its next checkpoint, which the new epoch refuses.
        lost = [i for i in held if i in taken and self._held.get(i) == held[i]]
        renewed = len(rows) - len(taken)
        if lost:
            log.warning("saga_leases_lost", held=len(held), renewed=renewed, lost=lost[:5])
        return renewed
