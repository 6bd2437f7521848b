"""The saga executor against real PostgreSQL: checkpoints, retries, reverse compensation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proveniq_core import db
from proveniq_core.errors import LedgerConstraintError, LockerTimeoutError
from proveniq_core.saga import store
from proveniq_core.saga.engine import SagaDefinition, SagaEngine, Step, StepContext

N_STEPS = 4


def make_saga(
    calls: list[str], *, fail_at: int | None = None, error: Exception | None = None, flaky: int = 0
) -> SagaDefinition:
    """Four steps logging execute/compensate calls; step ``fail_at`` raises ``error``."""
    remaining = {"flaky": flaky}

    def execute(i: int) -> Any:
        async def run(ctx: StepContext) -> dict[str, Any]:
            calls.append(f"do{i}")
            if i == fail_at:
                if remaining["flaky"] > 0:
                    remaining["flaky"] -= 1
                    raise error or LockerTimeoutError()
                if not flaky:
                    raise error or LockerTimeoutError()
            return {f"out{i}": ctx.attempt}

        return run

    def compensate(i: int) -> Any:
        async def run(ctx: StepContext) -> None:
            assert f"out{i}" in ctx.data  # compensation sees the step's output
            calls.append(f"undo{i}")

        return run

    return SagaDefinition(
        "test",
        tuple(
            Step(
                f"s{i}",
                execute(i),
                compensate(i),
                timeout=1.0,
                retries=2 if flaky else 0,
                backoff=0,
            )
            for i in range(N_STEPS)
        ),
    )


async def steps_of(pool: db.Pool, saga_id: str) -> list[tuple[int, str, str]]:
    async with db.connection(pool) as conn:
        found = await store.load(conn, saga_id)
    assert found is not None
    return [(s["step_index"], s["phase"], s["status"]) for s in found[1]]


async def test_all_steps_complete_and_are_checkpointed(pool: db.Pool) -> None:
    """A saga with no failure completes and records each step once, in order."""
    calls: list[str] = []
    result = await SagaEngine(pool).run(make_saga(calls), {"x": 1})
    assert result.ok
    assert calls == ["do0", "do1", "do2", "do3"]
    assert result.data == {"x": 1, "out0": 1, "out1": 1, "out2": 1, "out3": 1}
    assert await steps_of(pool, result.saga_id) == [(i, "execute", "completed") for i in range(4)]
    async with db.connection(pool) as conn:
        saga = await db.fetch_one(conn, "get_saga", {"id": result.saga_id})
    assert saga is not None and saga["status"] == "completed" and saga["data"]["out3"] == 1


@pytest.mark.parametrize("fail_at", range(N_STEPS))
async def test_failure_compensates_completed_steps_in_reverse(pool: db.Pool, fail_at: int) -> None:
    """A step failing at any position undoes exactly the earlier steps, last first."""
    calls: list[str] = []
    result = await SagaEngine(pool).run(make_saga(calls, fail_at=fail_at), {})
    assert result.status == "compensated"
    assert result.failed_step == f"s{fail_at}"
    assert isinstance(result.error, LockerTimeoutError)
    expected = [f"do{i}" for i in range(fail_at + 1)] + [
        f"undo{i}" for i in reversed(range(fail_at))
    ]
    assert calls == expected
    recorded = await steps_of(pool, result.saga_id)
    assert (fail_at, "execute", "failed") in recorded
    assert [r for r in recorded if r[1] == "compensate"] == [
        (i, "compensate", "completed") for i in reversed(range(fail_at))
    ]


async def test_retryable_errors_are_retried_within_the_step(pool: db.Pool) -> None:
    """A step that times out twice then succeeds completes on its third attempt."""
    calls: list[str] = []
    result = await SagaEngine(pool).run(make_saga(calls, fail_at=1, flaky=2), {})
    assert result.ok
    assert calls.count("do1") == 3
    async with db.connection(pool) as conn:
        found = await store.load(conn, result.saga_id)
    assert found is not None
    assert [s["attempts"] for s in found[1] if s["step_index"] == 1] == [3]


async def test_non_retryable_errors_fail_at_once(pool: db.Pool) -> None:
    """A constraint violation is not retried: one attempt, then compensation."""
    calls: list[str] = []
    saga = make_saga(calls, fail_at=2, error=LedgerConstraintError())
    retrying = SagaDefinition(
        saga.name,
        tuple(Step(s.name, s.execute, s.compensate, retries=3, backoff=0) for s in saga.steps),
    )
    result = await SagaEngine(pool).run(retrying, {})
    assert result.status == "compensated"
    assert calls.count("do2") == 1


async def test_step_timeout_fails_the_step(pool: db.Pool) -> None:
    """A step slower than its timeout fails with a timeout and is compensated."""
    undone: list[str] = []

    async def fast(ctx: StepContext) -> dict[str, Any]:
        return {}

    async def slow(ctx: StepContext) -> dict[str, Any]:
        await asyncio.sleep(5)
        return {}

    async def undo(ctx: StepContext) -> None:
        undone.append(ctx.step_name)

    saga = SagaDefinition("t", (Step("a", fast, undo), Step("b", slow, undo, timeout=0.05)))
    result = await SagaEngine(pool).run(saga, {})
    assert result.status == "compensated"
    assert isinstance(result.error, TimeoutError)
    assert undone == ["a"]


async def test_failing_compensation_ends_compensation_failed(pool: db.Pool) -> None:
    """A compensation that keeps failing is recorded and the saga ends compensation_failed."""

    async def ok(ctx: StepContext) -> dict[str, Any]:
        return {}

    async def boom(ctx: StepContext) -> dict[str, Any]:
        raise LockerTimeoutError()

    async def bad_undo(ctx: StepContext) -> None:
        raise LockerTimeoutError("unlink timed out")

    saga = SagaDefinition("t", (Step("a", ok, bad_undo, backoff=0), Step("b", boom)))
    result = await SagaEngine(pool).run(saga, {})
    assert result.status == "compensation_failed"
    assert result.compensation_errors == ["a"]
    assert (0, "compensate", "failed") in await steps_of(pool, result.saga_id)


async def test_transactional_step_rolls_back_with_its_checkpoint(pool: db.Pool) -> None:
    """A transactional step's writes and checkpoint commit together or not at all."""

    async def write_then_fail(ctx: StepContext) -> dict[str, Any]:
        await ctx.tx.execute("INSERT INTO tenants (id, name) VALUES ('ghost', 'ghost')")
        raise LedgerConstraintError("refused after the write")

    saga = SagaDefinition("t", (Step("w", write_then_fail, transactional=True),))
    result = await SagaEngine(pool).run(saga, {})
    assert result.status == "compensated"
    async with db.connection(pool) as conn:
        row = await (
            await conn.execute("SELECT count(*) AS n FROM tenants WHERE id='ghost'")
        ).fetchone()
    assert row is not None and row["n"] == 0
    assert await steps_of(pool, result.saga_id) == [(0, "execute", "failed")]
