"""The saga executor: run steps in order, checkpoint each, compensate in reverse on failure.

A step's start and result are committed before the next step begins. A *transactional*
step runs inside its own checkpoint transaction (ledger writes commit atomically with the
record that they happened); any other step (a locker command) runs between two commits,
with an idempotency key stable across re-executions: ``f"{saga_id}:{step_index}"``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from proveniq_core import db
from proveniq_core.errors import CoreError
from proveniq_core.saga import store

log = structlog.get_logger(__name__)


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


@dataclass(slots=True)
class SagaResult:
    """How a run ended. ``error`` is the step failure that triggered compensation."""

    saga_id: str
    status: str
    data: dict[str, Any]
    failed_step: str | None = None
    error: BaseException | None = None
    compensation_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "completed"


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


async def _call(step: Step, ctx: StepContext) -> dict[str, Any]:
    result = await asyncio.wait_for(step.execute(ctx), step.timeout)
    return result or {}


class SagaEngine:
    """Runs sagas against one pool. ``owner`` names this process in the lease columns."""

    def __init__(self, pool: db.Pool, *, owner: str | None = None, lease: float = 60.0) -> None:
        self.pool = pool
        self.owner = owner or f"proc-{uuid.uuid4().hex[:8]}"
        self.lease = lease

    async def run(
        self,
        definition: SagaDefinition,
        input: dict[str, Any],
        *,
        saga_id: str | None = None,
        tenant_id: str | None = None,
    ) -> SagaResult:
        saga_id = saga_id or str(uuid.uuid4())
        async with db.transaction(self.pool) as conn:
            await store.create(
                conn,
                saga_id=saga_id,
                name=definition.name,
                tenant_id=tenant_id,
                input=input,
                owner=self.owner,
                lease=self.lease,
            )
        data = dict(input)
        done: list[int] = []
        started = time.perf_counter()
        for index, step in enumerate(definition.steps):
            try:
                data.update(await self._execute(saga_id, index, step, data))
            except Exception as exc:
                log.warning("saga_step_failed", saga_id=saga_id, step=step.name, error=str(exc))
                result = await self._compensate(saga_id, definition, done, data)
                result.failed_step, result.error = step.name, exc
                return result
            done.append(index)
        async with db.transaction(self.pool) as conn:
            await store.set_status(conn, saga_id, "completed")
        log.info(
            "saga_completed",
            saga_id=saga_id,
            saga=definition.name,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return SagaResult(saga_id, "completed", data)

    async def _execute(
        self, saga_id: str, index: int, step: Step, data: dict[str, Any], phase: str = "execute"
    ) -> dict[str, Any]:
        """Run one step (or its compensation) with retries; checkpoint start and result.

        A failed execution is retried only when the error is retryable; a failed
        compensation always is. Raises the last error.
        """
        if not step.transactional:
            async with db.transaction(self.pool) as conn:
                await store.step_started(conn, saga_id, index, phase, step.name)
        attempt = 0
        while True:
            attempt += 1
            ctx = StepContext(saga_id, index, step.name, attempt, dict(data))
            try:
                if step.transactional:
                    async with db.transaction(self.pool) as conn:
                        ctx.conn = conn
                        await store.step_started(conn, saga_id, index, phase, step.name)
                        out = await _call(step, ctx)
                        await store.step_finished(
                            conn, saga_id, index, phase, attempts=attempt, output=out
                        )
                    return out
                out = await _call(step, ctx)
            except Exception as exc:
                if attempt <= step.retries and (phase == "compensate" or retryable(exc)):
                    await asyncio.sleep(step.backoff * 2 ** (attempt - 1))
                    continue
                async with db.transaction(self.pool) as conn:
                    if step.transactional:
                        await store.step_started(conn, saga_id, index, phase, step.name)
                    await store.step_finished(
                        conn, saga_id, index, phase, attempts=attempt, error=error_doc(exc)
                    )
                raise
            async with db.transaction(self.pool) as conn:
                await store.step_finished(conn, saga_id, index, phase, attempts=attempt, output=out)
            return out

    async def _compensate(
        self, saga_id: str, definition: SagaDefinition, done: list[int], data: dict[str, Any]
    ) -> SagaResult:
        async with db.transaction(self.pool) as conn:
            await store.set_status(conn, saga_id, "compensating")
        failures: list[str] = []
        for index in reversed(done):
            step = definition.steps[index]
            if step.compensate is None:
                continue
            undo = Step(
                step.name,
                step.compensate,
                timeout=step.timeout,
                retries=max(step.retries, 2),
                transactional=step.transactional,
            )
            try:
                await self._execute(saga_id, index, undo, data, phase="compensate")
            except Exception as exc:
                log.error(
                    "saga_compensation_failed", saga_id=saga_id, step=step.name, error=str(exc)
                )
                failures.append(step.name)
        status = "compensation_failed" if failures else "compensated"
        async with db.transaction(self.pool) as conn:
            await store.set_status(conn, saga_id, status)
        return SagaResult(saga_id, status, data, compensation_errors=failures)
