"""The saga executor against real PostgreSQL: checkpoints, retries, reverse compensation,
leases and fencing, resumption, durable timers and durable compensation."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from proveniq_core import db
from proveniq_core.errors import LedgerConstraintError, LockerHardwareError, LockerTimeoutError
from proveniq_core.saga import (
    Defer,
    LeaseLostError,
    SagaDefinition,
    SagaEngine,
    SagaResult,
    SagaStatus,
    Step,
    StepContext,
    StepError,
    store,
)
from proveniq_core.saga._journal import Journal, SagaRun, attempt_row, end_row
from proveniq_core.saga.clock import SystemClock
from proveniq_core.saga.model import HOLD, AttemptStatus, Phase
from proveniq_core.saga.planner import SagaState
from tests.helpers import eventually

N_STEPS = 4


class ManualClock:
    """The engine's time, moved by the test (``advance``) instead of slept through."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def offset(self) -> float:
        return self._offset

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        wake = asyncio.get_running_loop().create_future()
        self._sleepers.append((self._offset + seconds, wake))
        await wake

    def advance(self, seconds: float) -> None:
        self._offset += seconds
        for at, wake in list(self._sleepers):
            if at <= self._offset or wake.done():
                self._sleepers.remove((at, wake))
                if not wake.done():
                    wake.set_result(None)


def locker_timeout_in_doubt(error: StepError) -> bool:
    """The rule these test sagas supply: a step that timed out may have acted."""
    return error.code in ("E_TIMEOUT", LockerTimeoutError.code)


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
        in_doubt=locker_timeout_in_doubt,
    )


async def log_of(pool: db.Pool, saga_id: str) -> list[tuple[int, str, int, str]]:
    """The step log: (step index, phase, attempt, status) in order."""
    async with db.connection(pool) as conn:
        found = await store.load(conn, saga_id)
    assert found is not None
    return [(s["step_index"], s["phase"], s["attempt"], s["status"]) for s in found[1]]


async def saga_row(pool: db.Pool, saga_id: str) -> db.Row:
    async with db.connection(pool) as conn:
        row = await db.fetch_one(conn, "get_saga", {"id": saga_id})
    assert row is not None
    return row


async def alerts_for(pool: db.Pool, saga_id: str) -> list[db.Row]:
    async with db.connection(pool) as conn:
        cur = await conn.execute(
            "SELECT * FROM ops_alerts WHERE subject->>'sagaId' = %s", (saga_id,)
        )
        return await cur.fetchall()


@contextlib.asynccontextmanager
async def second_pool(database_url: str) -> AsyncIterator[db.Pool]:
    """Another process's pool on the same database."""
    other = await db.open_pool(database_url, min_size=1, max_size=4)
    await other.wait()
    try:
        yield other
    finally:
        await other.close()


async def test_all_steps_complete_and_are_checkpointed(pool: db.Pool) -> None:
    """A saga with no failure completes and records each step once, in order."""
    calls: list[str] = []
    result = await SagaEngine(pool).run(make_saga(calls), {"x": 1})
    assert result.ok
    assert calls == ["do0", "do1", "do2", "do3"]
    assert result.data == {"x": 1, "out0": 1, "out1": 1, "out2": 1, "out3": 1}
    assert await log_of(pool, result.saga_id) == [(i, "execute", 1, "completed") for i in range(4)]
    saga = await saga_row(pool, result.saga_id)
    assert saga["status"] == "completed" and saga["data"]["out3"] == 1
    assert saga["owner"] is None and saga["lease_until"] is None  # released


@pytest.mark.parametrize("fail_at", range(N_STEPS))
async def test_definite_failure_compensates_earlier_steps_in_reverse(
    pool: db.Pool, fail_at: int
) -> None:
    """A step that definitely failed (the device said no) undoes exactly the earlier steps."""
    calls: list[str] = []
    saga = make_saga(calls, fail_at=fail_at, error=LockerHardwareError())
    result = await SagaEngine(pool).run(saga, {})
    assert result.failed_step == f"s{fail_at}"
    assert isinstance(result.error, LockerHardwareError)
    undone = [f"undo{i}" for i in reversed(range(fail_at))]
    assert calls == [f"do{i}" for i in range(fail_at + 1)] + undone
    assert result.status == ("compensated" if undone else "failed")
    recorded = await log_of(pool, result.saga_id)
    assert (fail_at, "execute", 1, "failed") in recorded
    assert [r for r in recorded if r[1] == "compensate"] == [
        (i, "compensate", 1, "completed") for i in reversed(range(fail_at))
    ]
    assert (await saga_row(pool, result.saga_id))["error"]["code"] == "E_LOCKER_HARDWARE"


@pytest.mark.parametrize("fail_at", range(N_STEPS))
async def test_ambiguous_failure_also_compensates_the_failed_step(
    pool: db.Pool, fail_at: int
) -> None:
    """A command that timed out may have happened: its own compensation runs first."""
    calls: list[str] = []
    result = await SagaEngine(pool).run(make_saga(calls, fail_at=fail_at), {})
    assert result.status == "compensated"
    assert isinstance(result.error, LockerTimeoutError)
    assert calls == [f"do{i}" for i in range(fail_at + 1)] + [
        f"undo{i}" for i in reversed(range(fail_at + 1))
    ]
    assert (await saga_row(pool, result.saga_id))["undo"] == list(reversed(range(fail_at + 1)))


async def test_retryable_errors_are_retried_within_the_step(pool: db.Pool) -> None:
    """A step that times out twice then succeeds completes on its third attempt, each logged."""
    calls: list[str] = []
    result = await SagaEngine(pool).run(make_saga(calls, fail_at=1, flaky=2), {})
    assert result.ok
    assert calls.count("do1") == 3
    assert [r for r in await log_of(pool, result.saga_id) if r[0] == 1] == [
        (1, "execute", 1, "failed"),
        (1, "execute", 2, "failed"),
        (1, "execute", 3, "completed"),
    ]
    assert result.data["out1"] == 3


async def test_non_retryable_errors_fail_at_once(pool: db.Pool) -> None:
    """A constraint violation is not retried: one attempt, then compensation."""
    calls: list[str] = []
    saga = make_saga(calls, fail_at=2, error=LedgerConstraintError())
    retrying = SagaDefinition(
        saga.name,
        tuple(Step(s.name, s.execute, s.compensate, retries=3, backoff=0) for s in saga.steps),
        in_doubt=saga.in_doubt,
    )
    result = await SagaEngine(pool).run(retrying, {})
    assert result.status == "compensated"
    assert calls.count("do2") == 1
    assert "undo2" not in calls


async def test_step_timeout_fails_the_step(pool: db.Pool) -> None:
    """A step slower than its timeout fails with a timeout; it and the earlier step are undone."""
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
    assert undone == ["b", "a"]
    assert (1, "execute", 1, "failed") in await log_of(pool, result.saga_id)


async def test_transactional_step_rolls_back_with_its_checkpoint(pool: db.Pool) -> None:
    """A transactional step's writes and checkpoint commit together or not at all."""

    async def write_then_fail(ctx: StepContext) -> dict[str, Any]:
        await ctx.tx.execute("INSERT INTO tenants (id, name) VALUES ('ghost', 'ghost')")
        raise LedgerConstraintError("refused after the write")

    saga = SagaDefinition("t", (Step("w", write_then_fail, transactional=True),))
    result = await SagaEngine(pool).run(saga, {})
    assert result.status == "failed"  # nothing had been done, so nothing to undo
    async with db.connection(pool) as conn:
        row = await (
            await conn.execute("SELECT count(*) AS n FROM tenants WHERE id='ghost'")
        ).fetchone()
    assert row is not None and row["n"] == 0
    assert await log_of(pool, result.saga_id) == [(0, "execute", 1, "failed")]


async def test_database_errors_in_a_step_are_translated(pool: db.Pool) -> None:
    """A raw constraint violation inside a step surfaces as E_LEDGER_CONSTRAINT, not retried."""
    attempts: list[int] = []

    async def duplicate(ctx: StepContext) -> dict[str, Any]:
        attempts.append(ctx.attempt)
        await ctx.tx.execute("INSERT INTO tenants (id, name) VALUES ('dup', 'a'), ('dup', 'b')")
        return {}

    saga = SagaDefinition("t", (Step("d", duplicate, transactional=True, retries=3),))
    result = await SagaEngine(pool).run(saga, {})
    assert isinstance(result.error, LedgerConstraintError)
    assert attempts == [1]


async def test_compensation_that_keeps_failing_ends_compensation_failed_with_an_alert(
    pool: db.Pool,
) -> None:
    """Each round retries the compensation on the saga's timer; after the last, an alert."""
    tries: list[int] = []

    async def ok(ctx: StepContext) -> dict[str, Any]:
        return {}

    async def boom(ctx: StepContext) -> dict[str, Any]:
        raise LockerHardwareError()

    async def bad_undo(ctx: StepContext) -> None:
        tries.append(ctx.attempt)
        raise LockerTimeoutError("unlink timed out")

    saga = SagaDefinition(
        "t",
        (Step("a", ok, bad_undo, backoff=0), Step("b", boom)),
        alert_subject=lambda data: {"assetId": data["assetId"]},
    )
    clock = ManualClock()
    engine = SagaEngine(pool, compensation_rounds=3, compensation_retry_base=5.0, clock=clock)
    first = await engine.run(saga, {"assetId": "a-1"})
    assert first.status == "compensating" and first.deferred == 5.0
    parked = await saga_row(pool, first.saga_id)
    assert parked["owner"] is None and parked["rounds"] == 1
    clock.advance(4.9)
    assert await engine.run_due() == []  # not due yet
    clock.advance(0.1)
    (second,) = await engine.run_due()
    assert second.status == "compensating" and second.deferred == 10.0
    clock.advance(10.0)
    (last,) = await engine.run_due()
    assert last.status == "compensation_failed"
    assert last.compensation_errors == ["a"]
    assert tries == list(range(1, 10))  # 3 rounds of 3 attempts, numbered on across rounds
    (alert,) = await alerts_for(pool, first.saga_id)
    assert alert["severity"] == "critical" and alert["code"] == "E_PARTIAL_COMMIT"
    assert alert["subject"]["assetId"] == "a-1" and alert["subject"]["step"] == "a"
    saga_after = await saga_row(pool, first.saga_id)
    assert saga_after["status"] == "compensation_failed" and saga_after["rounds"] == 3


async def test_compensation_recovers_in_a_later_round(pool: db.Pool) -> None:
    """A compensation that fails in round one and works in round two ends compensated."""
    state = {"fail": True}

    async def ok(ctx: StepContext) -> dict[str, Any]:
        return {}

    async def boom(ctx: StepContext) -> dict[str, Any]:
        raise LockerHardwareError()

    async def undo(ctx: StepContext) -> None:
        if state["fail"]:
            raise LockerTimeoutError("unlink timed out")

    saga = SagaDefinition("t", (Step("a", ok, undo, backoff=0), Step("b", boom)))
    clock = ManualClock()
    engine = SagaEngine(pool, compensation_rounds=3, compensation_retry_base=5.0, clock=clock)
    first = await engine.run(saga, {})
    assert first.status == "compensating"
    state["fail"] = False
    clock.advance(5.0)
    (second,) = await engine.run_due()
    assert second.status == "compensated"
    assert await alerts_for(pool, first.saga_id) == []


async def test_a_deferred_step_runs_again_when_due(pool: db.Pool) -> None:
    """A step raising Defer parks the saga on its timer; a worker resumes it when due."""

    async def wait_once(ctx: StepContext) -> dict[str, Any]:
        if ctx.attempt == 1:
            raise Defer(60.0, "device busy")
        return {"done": ctx.attempt}

    saga = SagaDefinition("t", (Step("w", wait_once),))
    clock = ManualClock()
    engine = SagaEngine(pool, clock=clock)
    first = await engine.run(saga, {})
    assert first.status == "running" and first.deferred == 60.0
    assert await engine.run_due() == []
    assert await engine.next_due_in() == pytest.approx(60.0, abs=5.0)
    clock.advance(60.0)
    (done,) = await engine.run_due()
    assert done.ok and done.data["done"] == 2
    assert await log_of(pool, first.saga_id) == [
        (0, "execute", 1, "deferred"),
        (0, "execute", 2, "completed"),
    ]


async def test_a_crashed_owner_is_resumed_without_repeating_completed_steps(
    pool: db.Pool, database_url: str
) -> None:
    """The owner dies inside step 2; after its lease expires another process finishes the saga:
    steps 0 and 1 are not run again, step 2 runs again with the same idempotency key."""
    seen: list[tuple[str, int, int, str]] = []
    hang, inside = asyncio.Event(), asyncio.Event()

    def step(i: int) -> Any:
        async def run(ctx: StepContext) -> dict[str, Any]:
            seen.append(("do", i, ctx.attempt, ctx.idempotency_key))
            if i == 2 and ctx.attempt == 1:
                inside.set()
                await hang.wait()  # the owner is "killed" here
            return {f"out{i}": True}

        return run

    saga = SagaDefinition("t", tuple(Step(f"s{i}", step(i), timeout=30) for i in range(4)))
    clock = ManualClock()
    doomed = SagaEngine(pool, owner="doomed", lease=15.0, clock=clock)
    task = asyncio.create_task(doomed.run(saga, {"x": 1}))
    await asyncio.wait_for(inside.wait(), 5)
    task.cancel()  # no more checkpoints from this owner; its lease is left to expire
    with contextlib.suppress(asyncio.CancelledError):
        await task
    saga_id = seen[2][3].split(":")[0]
    async with second_pool(database_url) as other:
        heir = SagaEngine(other, owner="heir", definitions=[saga], clock=clock)
        clock.advance(14.0)
        assert await heir.run_due() == []  # the lease still holds
        clock.advance(1.0)
        (result,) = await heir.run_due()
    assert result.ok and result.data == {"x": 1, "out0": True, "out1": True, "out2": True,
                                         "out3": True}  # fmt: skip
    assert [s[1] for s in seen] == [0, 1, 2, 2, 3]
    assert seen[3] == ("do", 2, 2, seen[2][3])  # same key, next attempt
    async with db.connection(pool) as conn:
        found = await store.load(conn, saga_id)
    assert found is not None
    saga_state, rows = found
    assert saga_state["epoch"] == 2
    assert [(r["step_index"], r["attempt"], r["status"], r["owner"]) for r in rows] == [
        (0, 1, "completed", "doomed"),
        (1, 1, "completed", "doomed"),
        (2, 1, "interrupted", "doomed"),
        (2, 2, "completed", "heir"),
        (3, 1, "completed", "heir"),
    ]


async def test_a_calls_end_commits_with_the_transactional_step_after_it(
    pool: db.Pool, database_url: str
) -> None:
    """A call to another system followed by a ledger write: the call's end is committed in
    the write's transaction, not on its own. While the write has not committed, the log
    shows the call still running; if the owner dies there, the heir runs the call again
    under the same idempotency key, then the write, and the log holds each once."""
    calls: list[tuple[int, str]] = []
    hang, inside = asyncio.Event(), asyncio.Event()

    async def call(ctx: StepContext) -> dict[str, Any]:
        calls.append((ctx.attempt, ctx.idempotency_key))
        return {"answer": ctx.attempt}

    async def write(ctx: StepContext) -> dict[str, Any]:
        await ctx.tx.execute("SELECT 1")
        if not calls[-1][0] > 1:  # the first owner "dies" inside its write
            inside.set()
            await hang.wait()
        return {"written": True}

    saga = SagaDefinition(
        "folded",
        (
            Step("call", call, timeout=30),
            Step("write", write, timeout=30, transactional=True),
        ),
    )
    clock = ManualClock()
    doomed = SagaEngine(pool, owner="doomed", lease=15.0, clock=clock)
    task = asyncio.create_task(doomed.run(saga, {}))
    await asyncio.wait_for(inside.wait(), 5)
    saga_id = calls[0][1].split(":")[0]
    assert await log_of(pool, saga_id) == [(0, "execute", 1, "running")]  # the end waits
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    async with second_pool(database_url) as other:
        heir = SagaEngine(other, owner="heir", definitions=[saga], clock=clock)
        clock.advance(15.0)
        (result,) = await heir.run_due()
    assert result.ok and result.data == {"answer": 2, "written": True}
    assert calls == [(1, f"{saga_id}:0"), (2, f"{saga_id}:0")]  # the same key again
    assert await log_of(pool, saga_id) == [
        (0, "execute", 1, "interrupted"),
        (0, "execute", 2, "completed"),
        (1, "execute", 1, "completed"),
    ]


async def test_a_failed_precondition_writes_nothing_and_its_additions_are_never_stored(
    pool: db.Pool,
) -> None:
    """The precondition runs in the saga's first transaction: when it raises, no saga row
    and no step log exist; when it holds, the first step sees what it added to the data,
    and the stored saga does not."""
    seen: list[dict[str, Any]] = []

    async def write(ctx: StepContext) -> dict[str, Any]:
        seen.append(dict(ctx.data))
        return {"written": True}

    async def refuse(conn: db.Conn, data: dict[str, Any]) -> None:
        raise LedgerConstraintError("no such thing")

    async def note(conn: db.Conn, data: dict[str, Any]) -> None:
        cur = await conn.execute("SELECT 41 + 1 AS answer")
        row = await cur.fetchone()
        assert row is not None
        data["checked"] = row["answer"]

    for first_is_transactional in (True, False):
        saga = SagaDefinition(
            f"pre{first_is_transactional}",
            (Step("write", write, timeout=5, transactional=first_is_transactional),),
        )
        engine = SagaEngine(pool)
        with pytest.raises(LedgerConstraintError):
            await engine.run(saga, {"x": 1}, saga_id=(refused := str(uuid.uuid4())),
                             precondition=refuse)  # fmt: skip
        async with db.connection(pool) as conn:
            assert await db.fetch_one(conn, "get_saga", {"id": refused}) is None
        result = await engine.run(saga, {"x": 1}, precondition=note)
        assert result.ok
        assert seen.pop()["checked"] == 42
        stored = await saga_row(pool, result.saga_id)
        assert "checked" not in stored["input"] and "checked" not in stored["data"]
        assert await log_of(pool, result.saga_id) == [(0, "execute", 1, "completed")]


async def test_one_checkpoint_records_several_attempts_or_none(pool: db.Pool) -> None:
    """What two ledger steps after a call write at their commit, as one statement: the
    call's end, both steps begun and ended, the saga's end. A stale epoch writes none of it."""
    journal = Journal(pool, SystemClock(), lease=30.0)

    async def noop(ctx: StepContext) -> dict[str, Any]:
        return {}

    saga = SagaDefinition(
        "arrays",
        (Step("a", noop), *(Step(n, noop, transactional=True) for n in "bc")),
    )
    a, b, c = (attempt_row(i, Phase.EXECUTE, 1, n) for i, n in enumerate("abc"))
    done = AttemptStatus.COMPLETED
    ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    async with db.connection(pool) as conn:
        for saga_id in ids:
            row = journal.saga_row(saga_id, saga, {}, None, owner="me")
            await db.execute(conn, "insert_saga", row | {"first_step": "a"})
        for saga_id, epoch in zip(ids, (1, 2), strict=True):
            run = SagaRun(saga_id, epoch, saga, {}, SagaState(SagaStatus.RUNNING))
            journal.hold(run, end=end_row(a, done, {"a": 1}), data={"a": 1})
            journal.hold(run, begin=b, end=end_row(b, done, {"b": 2}), data={"b": 2})
            checkpoint = journal.checkpoint(
                conn,
                run,
                begin=c,
                end=end_row(c, done, {"c": 3}),
                data={"c": 3},
                status=SagaStatus.COMPLETED,
            )
            if epoch == 1:
                await checkpoint
            else:
                with pytest.raises(LeaseLostError):
                    await checkpoint
        cur = await conn.execute(
            "SELECT saga_id::text, step_index, status, output, finished_at IS NOT NULL AS ended"
            " FROM saga_steps WHERE saga_id = ANY(%s)",
            (ids,),
        )
        steps = sorted(
            (tuple(r.values()) for r in await cur.fetchall()), key=lambda r: (ids.index(r[0]), r[1])
        )
    assert steps == [
        (ids[0], 0, "completed", {"a": 1}, True),
        (ids[0], 1, "completed", {"b": 2}, True),
        (ids[0], 2, "completed", {"c": 3}, True),
        (ids[1], 0, "running", None, False),
    ]
    written, untouched = [await saga_row(pool, i) for i in ids]
    assert (written["status"], written["data"]) == ("completed", {"a": 1, "b": 2, "c": 3})
    assert (untouched["status"], untouched["data"]) == ("running", {})


async def saga_checkpoint(conn: db.Conn, saga_id: str, args: dict[str, Any]) -> None:
    """The SQL function itself, argument by argument, at epoch 1 (empty JSON is NULL)."""

    def json(key: str) -> Any:
        return db.jsonb(args[key]) if args.get(key) else None

    status = args.get("status")
    await conn.execute(
        "SELECT saga_checkpoint(%s, 1, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (saga_id, json("begin"), json("end"), json("next"), json("data"),
         None if status is None else status.value, json("error"), args.get("undo"),
         args.get("defer"), args.get("rounds")),
    )  # fmt: skip


async def test_a_checkpoint_written_as_a_row_of_a_batch_writes_what_the_statement_does(
    pool: db.Pool,
) -> None:
    """The group commit writes a batch's checkpoints as rows of one ``saga_checkpoints``
    call: for each kind of checkpoint (a step's end and the next one's start, a hold with
    undo, an error and zero rounds, a finite delay, an empty undo, the saga's end) the saga
    and its log end up exactly as ``saga_checkpoint`` leaves them."""
    journal = Journal(pool, SystemClock(), lease=30.0)

    async def noop(ctx: StepContext) -> dict[str, Any]:
        return {}

    saga = SagaDefinition("rows", (Step("a", noop), Step("b", noop)))
    a, b = attempt_row(0, Phase.EXECUTE, 1, "a"), attempt_row(1, Phase.EXECUTE, 1, "b")
    done = AttemptStatus.COMPLETED
    failed = end_row(a, AttemptStatus.FAILED, error={"code": "X"})
    kinds: list[tuple[dict[str, Any], dict[str, Any]]] = [  # the arguments, some of the outcome
        ({"end": end_row(a, done, {"a": 1}), "next": b, "data": {"a": 1}},
         {"data": {"a": 1}, "steps": [[0, "completed", {"a": 1}, None, True],
                                      [1, "running", None, None, False]]}),
        ({"end": failed, "defer": HOLD, "undo": [0], "rounds": 0, "error": {"code": "X"}},
         {"due": "held", "undo": [0], "rounds": 0, "owner": None, "error": {"code": "X"}}),
        ({"defer": 5.0, "rounds": 2}, {"due": "5", "rounds": 2, "released": True}),
        ({"undo": [], "data": {}}, {"undo": [], "data": {}, "released": False}),
        ({"end": end_row(a, done), "status": SagaStatus.COMPLETED},
         {"status": "completed", "finished": True}),
    ]  # fmt: skip
    compared = (
        "SELECT s.status, s.data, s.error, s.undo, s.rounds, s.owner, s.lease_until IS NULL"
        " AS released, s.finished_at IS NOT NULL AS finished, CASE WHEN s.run_at = 'infinity'"
        " THEN 'held' ELSE round(extract(epoch FROM s.run_at - now()))::text END AS due,"
        " (SELECT jsonb_agg(jsonb_build_array(step_index, status, output, error,"
        "  finished_at IS NOT NULL) ORDER BY step_index) FROM saga_steps WHERE saga_id = s.id)"
        " AS steps FROM sagas s WHERE s.id = %s"
    )
    for args, outcome in kinds:
        ids = [str(uuid.uuid4()), str(uuid.uuid4())]
        async with db.transaction(pool) as conn:
            for saga_id in ids:
                row = journal.saga_row(saga_id, saga, {}, None, owner="me")
                await db.execute(conn, "insert_saga", row | {"first_step": "a"})
            await saga_checkpoint(conn, ids[0], args)
            await db.execute(
                conn, "saga_checkpoints", {"rows": db.jsonb([journal.row(ids[1], 1, **args)])}
            )
            results = []
            for saga_id in ids:
                cur = await conn.execute(compared, (saga_id,))
                results.append(await cur.fetchone())
        assert results[0] == results[1], args
        assert results[1] is not None and {k: results[1][k] for k in outcome} == outcome, args


async def commits_of(pool: db.Pool, saga_id: str) -> list[str]:
    """The transaction that last wrote each of the saga's step log rows, in log order."""
    async with db.connection(pool) as conn:
        cur = await conn.execute(
            "SELECT xmin::text AS tx FROM saga_steps WHERE saga_id = %s"
            " ORDER BY started_at, step_index, attempt",
            (saga_id,),
        )
        return [row["tx"] for row in await cur.fetchall()]


async def test_consecutive_ledger_steps_commit_together(pool: db.Pool) -> None:
    """A call, then two ledger steps, then a call: the first call's end and both ledger
    steps are written by one transaction; the saga's outcome is as step by step."""
    async with db.connection(pool) as conn:
        await conn.execute("CREATE TABLE IF NOT EXISTS pair_marks (saga_id uuid, step text)")

    def mark(name: str) -> Any:
        async def run(ctx: StepContext) -> dict[str, Any]:
            await ctx.tx.execute("INSERT INTO pair_marks VALUES (%s, %s)", (ctx.saga_id, name))
            return {name: True}

        return run

    async def call(ctx: StepContext) -> dict[str, Any]:
        return {ctx.step_name: True}

    saga = SagaDefinition(
        "pair",
        (
            Step("call", call),
            Step("a", mark("a"), transactional=True),
            Step("b", mark("b"), transactional=True),
            Step("after", call),
        ),
    )
    result = await SagaEngine(pool).run(saga, {})
    assert result.ok and result.data == {"call": True, "a": True, "b": True, "after": True}
    call_tx, a_tx, b_tx, after_tx = await commits_of(pool, result.saga_id)
    assert call_tx == a_tx == b_tx != after_tx
    async with db.connection(pool) as conn:
        cur = await conn.execute(
            "SELECT step FROM pair_marks WHERE saga_id = %s", (result.saga_id,)
        )
        assert sorted(r["step"] for r in await cur.fetchall()) == ["a", "b"]


@pytest.mark.parametrize("failing", ["a", "b"])
async def test_a_statement_failing_in_a_pair_of_ledger_steps_fails_its_own_step(
    pool: db.Pool, failing: str
) -> None:
    """Two ledger steps share a transaction whose statements are read only at the commit:
    when one step's write breaks a constraint, nothing of the shared try is kept, and the
    steps run one by one find which: the saga fails at that step, the other's write stays
    only if it came first."""
    async with db.connection(pool) as conn:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS pair_checked (saga_id uuid, step text CHECK (step <> 'x'))"
        )

    def mark(name: str) -> Any:
        async def run(ctx: StepContext) -> dict[str, Any]:
            value = "x" if name == failing else name
            await ctx.tx.execute("INSERT INTO pair_checked VALUES (%s, %s)", (ctx.saga_id, value))
            return {name: True}

        return run

    async def call(ctx: StepContext) -> dict[str, Any]:
        return {ctx.step_name: True}

    saga = SagaDefinition(
        "pair_fails",
        (
            Step("call", call),
            Step("a", mark("a"), transactional=True),
            Step("b", mark("b"), transactional=True),
        ),
    )
    result = await SagaEngine(pool).run(saga, {})
    assert result.status is SagaStatus.FAILED and result.failed_step == failing
    assert isinstance(result.error, LedgerConstraintError)
    async with db.connection(pool) as conn:
        cur = await conn.execute(
            "SELECT step FROM pair_checked WHERE saga_id = %s", (result.saga_id,)
        )
        kept = [r["step"] for r in await cur.fetchall()]
    assert kept == ([] if failing == "a" else ["a"])


async def test_when_the_second_ledger_step_defers_the_first_commits_alone(pool: db.Pool) -> None:
    """The second of two ledger steps defers: nothing of the shared try is kept; the first
    runs again alone and commits (its write once), the second is deferred, then completes."""
    async with db.connection(pool) as conn:
        await conn.execute("CREATE TABLE IF NOT EXISTS pair_marks (saga_id uuid, step text)")
    tries = {"b": 0}

    async def a(ctx: StepContext) -> dict[str, Any]:
        await ctx.tx.execute("INSERT INTO pair_marks VALUES (%s, 'a')", (ctx.saga_id,))
        return {"a": True}

    async def b(ctx: StepContext) -> dict[str, Any]:
        tries["b"] += 1
        if tries["b"] <= 2:  # the shared try and the one on its own
            raise Defer(0.0)
        return {"b": True}

    saga = SagaDefinition(
        "pair_defer", (Step("a", a, transactional=True), Step("b", b, transactional=True))
    )
    engine = SagaEngine(pool, definitions=[saga])
    parked = await engine.run(saga, {})
    assert parked.deferred is not None
    assert [s[:2] + s[3:] for s in await log_of(pool, parked.saga_id)] == [
        (0, "execute", "completed"),
        (1, "execute", "deferred"),
    ]
    (done,) = await engine.run_due()
    assert done.ok and done.data == {"a": True, "b": True}
    async with db.connection(pool) as conn:
        cur = await conn.execute("SELECT step FROM pair_marks WHERE saga_id = %s", (done.saga_id,))
        assert [r["step"] for r in await cur.fetchall()] == ["a"]
    assert tries["b"] == 3


async def outlived_by_an_heir(
    pool: db.Pool,
    database_url: str,
    saga: SagaDefinition,
    inside: asyncio.Event,
    release: asyncio.Event,
) -> SagaResult:
    """Start ``saga`` under a lease that is never renewed; once its step is ``inside`` (and
    paused), move time past the lease: another process's engine claims and finishes the
    saga; then ``release`` the stale owner, whose run must end in ``LeaseLostError``.
    Returns the heir's result."""
    clock = ManualClock()
    stale = SagaEngine(pool, owner="stale", lease=15.0, clock=clock)
    task = asyncio.create_task(stale.run(saga, {}))
    await asyncio.wait_for(inside.wait(), 5)
    clock.advance(15.0)
    async with second_pool(database_url) as other:
        heir = SagaEngine(other, owner="heir", definitions=[saga], clock=clock)
        (result,) = await heir.run_due()
    assert result.ok and result.data["by"] == "heir"
    release.set()
    with pytest.raises(LeaseLostError):
        await task
    return result


async def test_a_stale_owner_cannot_overwrite_the_new_owners_result(
    pool: db.Pool, database_url: str
) -> None:
    """An owner paused past its lease wakes up after another finished the saga: its
    checkpoint is refused (fencing) and the new owner's result stands."""
    inside, release = asyncio.Event(), asyncio.Event()

    async def slow_first(ctx: StepContext) -> dict[str, Any]:
        if ctx.attempt == 1:
            inside.set()
            await release.wait()  # a long GC pause, a partition…
            return {"by": "stale"}
        return {"by": "heir"}

    saga = SagaDefinition("t", (Step("s", slow_first, timeout=30),))
    result = await outlived_by_an_heir(pool, database_url, saga, inside, release)
    saga_state = await saga_row(pool, result.saga_id)
    assert saga_state["status"] == "completed" and saga_state["data"]["by"] == "heir"
    assert await log_of(pool, result.saga_id) == [
        (0, "execute", 1, "interrupted"),
        (0, "execute", 2, "completed"),
    ]


async def test_a_stale_transactional_step_is_rolled_back_whole_at_its_fence(
    pool: db.Pool, database_url: str
) -> None:
    """A transactional step checkpoints after its writes, in one pipelined commit: when its
    owner lost the saga meanwhile, the commit is refused and none of its writes remain."""
    async with db.connection(pool) as conn:
        await conn.execute("CREATE TABLE marks (saga_id uuid, by text)")
    inside, release = asyncio.Event(), asyncio.Event()
    calls: list[str] = []

    async def mark(ctx: StepContext) -> dict[str, Any]:
        by = "heir" if calls else "stale"
        calls.append(by)
        await ctx.tx.execute("INSERT INTO marks VALUES (%s, %s)", (ctx.saga_id, by))
        if by == "stale":
            inside.set()
            await release.wait()  # paused, transaction open, past the lease
        return {"by": by}

    async def begin(ctx: StepContext) -> dict[str, Any]:
        return {}

    saga = SagaDefinition(
        "t", (Step("begin", begin), Step("mark", mark, timeout=30, transactional=True))
    )
    result = await outlived_by_an_heir(pool, database_url, saga, inside, release)
    async with db.connection(pool) as conn:
        cur = await conn.execute("SELECT by FROM marks WHERE saga_id = %s", (result.saga_id,))
        assert [r["by"] for r in await cur.fetchall()] == ["heir"]
    assert (await saga_row(pool, result.saga_id))["data"]["by"] == "heir"
    # "begin"'s end was to commit with the refused transaction: the heir ran it again.
    assert await log_of(pool, result.saga_id) == [
        (0, "execute", 1, "interrupted"),
        (0, "execute", 2, "completed"),
        (1, "execute", 1, "completed"),
    ]


def waiting_saga() -> tuple[SagaDefinition, asyncio.Event, asyncio.Event]:
    """A one-step saga whose step sets ``inside`` and then waits for ``finish``."""
    inside, finish = asyncio.Event(), asyncio.Event()

    async def long_step(ctx: StepContext) -> dict[str, Any]:
        inside.set()
        await finish.wait()
        return {}

    return SagaDefinition("t", (Step("long", long_step, timeout=30),)), inside, finish


async def test_keepalive_keeps_a_long_step_from_being_claimed(pool: db.Pool) -> None:
    """A step that lasts twice the lease is not stolen while its owner renews the lease
    every third of it; the same lease left alone for as long is taken."""
    saga, inside, finish = waiting_saga()
    clock = ManualClock()
    owner = SagaEngine(pool, owner="owner", lease=15.0, clock=clock)
    rival = SagaEngine(pool, owner="rival", definitions=[saga], clock=clock)
    keepalive = asyncio.create_task(owner.keepalive())
    try:
        task = asyncio.create_task(owner.run(saga, {}))
        await asyncio.wait_for(inside.wait(), 5)
        claimed = []
        for _ in range(6):  # 30 s: twice the lease
            before = await lease_until(pool, owner)
            clock.advance(5.0)
            await eventually(lambda before=before: renewed_since(pool, owner, before))
            claimed += await rival.claim(10)
        finish.set()
        result = await task
    finally:
        keepalive.cancel()
    assert claimed == []
    assert result.ok
    assert [r[3] for r in await log_of(pool, result.saga_id)] == ["completed"]


async def lease_until(pool: db.Pool, engine: SagaEngine) -> Any:
    """When the lease of the one saga ``engine`` drives runs out."""
    (saga_id,) = engine._held
    return (await saga_row(pool, saga_id))["lease_until"]


async def renewed_since(pool: db.Pool, engine: SagaEngine, before: Any) -> bool:
    return bool(await lease_until(pool, engine) > before)


async def test_a_lease_left_unrenewed_is_claimed_once_it_runs_out(pool: db.Pool) -> None:
    """Without renewal another engine claims a saga exactly when its lease has run out."""
    saga, inside, finish = waiting_saga()
    clock = ManualClock()
    owner = SagaEngine(pool, owner="owner", lease=15.0, clock=clock)
    rival = SagaEngine(pool, owner="rival", definitions=[saga], clock=clock)
    task = asyncio.create_task(owner.run(saga, {}))
    try:
        await asyncio.wait_for(inside.wait(), 5)
        clock.advance(14.0)
        assert await rival.claim(10) == []
        assert await owner.renew() == 1
        clock.advance(14.0)
        assert await rival.claim(10) == []  # renewed 14 s ago
        clock.advance(1.0)
        (claimed,) = await rival.claim(10)
        assert claimed["owner"] == "rival" and claimed["epoch"] == 2
        # The claim hands over the step log as it now stands: the owner's attempt interrupted.
        handed = [
            (s["step_index"], s["phase"], s["attempt"], s["status"]) for s in claimed["steps"]
        ]
        assert (
            handed == await log_of(pool, str(claimed["id"])) == [(0, "execute", 1, "interrupted")]
        )
        assert claimed["steps"][0]["error"]["code"] == "E_INTERRUPTED"
        assert await owner.renew() == 0  # no longer the owner's
    finally:
        finish.set()
        with pytest.raises(LeaseLostError):
            await task


async def test_only_a_lease_another_owner_took_is_reported_lost(pool: db.Pool) -> None:
    """A saga let go between a renewal's snapshot of what is held and its statement (its
    parking checkpoint committed, its hold not yet dropped) is not lost; one that another
    owner claimed is, in a warning naming it."""
    saga, inside, finish = waiting_saga()
    owner = SagaEngine(pool, owner="owner", lease=15.0)
    task = asyncio.create_task(owner.run(saga, {}))
    try:
        await asyncio.wait_for(inside.wait(), 5)
        (saga_id,) = owner._held
        async with pool.connection() as conn:  # as a parking checkpoint leaves it
            await conn.execute(
                "UPDATE sagas SET owner = NULL, lease_until = NULL WHERE id = %s", [saga_id]
            )
        with capture_logs() as released:
            assert await owner.renew() == 0
        assert [e for e in released if e["event"] == "saga_leases_lost"] == []

        async with pool.connection() as conn:  # another owner's claim
            await conn.execute(
                "UPDATE sagas SET owner = 'rival', epoch = epoch + 1,"
                " lease_until = now() + interval '15 seconds' WHERE id = %s",
                [saga_id],
            )
        with capture_logs() as taken:
            assert await owner.renew() == 0
        [warning] = [e for e in taken if e["event"] == "saga_leases_lost"]
        assert warning["lost"] == [saga_id]
    finally:
        finish.set()
        with pytest.raises(LeaseLostError):
            await task


async def test_racing_workers_never_run_a_step_twice(pool: db.Pool, database_url: str) -> None:
    """Two workers claim the same due sagas, over and over: every step runs exactly once,
    by the one worker that claimed its saga, and no two executions of a step overlap."""
    runs: list[tuple[str, int, str]] = []

    def step(i: int) -> Any:
        async def run(ctx: StepContext) -> dict[str, Any]:
            runs.append((ctx.saga_id, i, ctx.data["by"]))
            await asyncio.sleep(0)
            return {}

        return run

    saga = SagaDefinition("race", tuple(Step(f"s{i}", step(i)) for i in range(3)))
    n = 200
    async with second_pool(database_url) as other:
        a = SagaEngine(pool, owner="a", definitions=[saga])
        b = SagaEngine(other, owner="b", definitions=[saga])
        for i in range(n):
            await a.schedule(saga, {"i": i, "by": "?"})

        async def drain(engine: SagaEngine) -> list[str]:
            done: list[str] = []
            while True:
                results = await engine.run_due(limit=7)
                if not results:
                    return done
                done += [r.saga_id for r in results if r.ok]

        done_a, done_b = await asyncio.gather(drain(a), drain(b))
    assert len(done_a) + len(done_b) == n
    assert not set(done_a) & set(done_b)
    assert done_a and done_b  # both really competed
    assert len(runs) == 3 * n
    assert len({(saga_id, i) for saga_id, i, _ in runs}) == 3 * n  # no step ran twice
    async with db.connection(pool) as conn:
        cur = await conn.execute(
            "SELECT count(*) AS n FROM saga_steps WHERE status <> 'completed' OR attempt <> 1"
        )
        row = await cur.fetchone()
    assert row is not None and row["n"] == 0


async def test_a_worker_drives_at_most_its_concurrency_and_stopping_it_leaves_the_rest(
    pool: db.Pool,
) -> None:
    """A worker claims no more sagas than it may drive at once; stopping it cancels those in
    flight, which another worker finishes once their leases run out."""
    gate, running, cancelled = asyncio.Event(), [0], [0]

    async def held(ctx: StepContext) -> dict[str, Any]:
        running[0] += 1
        try:
            await gate.wait()
        except asyncio.CancelledError:
            cancelled[0] += 1
            raise
        finally:
            running[0] -= 1
        return {}

    saga = SagaDefinition("gated", (Step("held", held, timeout=30),))
    clock = ManualClock()
    first = SagaEngine(pool, owner="first", definitions=[saga], clock=clock)
    ids = [await first.schedule(saga, {}) for _ in range(5)]
    assert not first.backlogged()  # no worker yet
    worker = asyncio.create_task(first.work(concurrency=2, poll=0.05))
    try:
        await eventually(lambda: settled(running, 2))
        assert await owners(pool, ids) == {"first": 2, None: 3}
        assert first.backlogged()  # a backlog: other work yields to it
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    assert cancelled[0] == 2 and running[0] == 0
    gate.set()
    second = SagaEngine(pool, owner="second", definitions=[saga], clock=clock)
    assert len(await second.run_due()) == 3  # the two in flight are still leased
    clock.advance(first.lease)
    assert [r.ok for r in await second.run_due()] == [True, True]
    assert await owners(pool, ids) == {None: 5}
    assert not first.backlogged()


async def settled(running: list[int], n: int) -> bool:
    return running[0] == n


async def owners(pool: db.Pool, ids: list[str]) -> dict[str | None, int]:
    """How many of the sagas ``ids`` each owner holds (None: nobody)."""
    counts: dict[str | None, int] = {}
    for saga_id in ids:
        owner = (await saga_row(pool, saga_id))["owner"]
        counts[owner] = counts.get(owner, 0) + 1
    return counts


async def test_timer_fires_once_at_or_after_its_time_across_a_restart(
    pool: db.Pool, database_url: str
) -> None:
    """A scheduled saga survives its worker's restart and fires once, not before its time."""
    async with db.connection(pool) as conn:
        await conn.execute(
            "CREATE TABLE fired (saga_id uuid, at timestamptz DEFAULT clock_timestamp())"
        )

    async def fire(ctx: StepContext) -> dict[str, Any]:
        await ctx.tx.execute("INSERT INTO fired (saga_id) VALUES (%s)", (ctx.saga_id,))
        return {}

    saga = SagaDefinition("timer", (Step("fire", fire, transactional=True),))
    saga_id = await SagaEngine(pool).schedule(saga, {}, delay=1.0)
    before = SagaEngine(pool, owner="before", definitions=[saga])
    worker = asyncio.create_task(before.work(poll=0.05))
    await asyncio.sleep(0.4)
    worker.cancel()  # the process restarts before the timer is due
    with contextlib.suppress(asyncio.CancelledError):
        await worker
    async with second_pool(database_url) as other:
        after = SagaEngine(other, owner="after", definitions=[saga])
        waker = db.Waker(database_url)
        tasks = [
            asyncio.create_task(waker.run()),
            asyncio.create_task(after.work(waker, poll=0.05)),
        ]
        try:
            for _ in range(100):
                if (await saga_row(pool, saga_id))["status"] == "completed":
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # room for a second firing, were there one
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    async with db.connection(pool) as conn:
        cur = await conn.execute(
            "SELECT f.at >= s.run_at AS on_time, s.owner, s.status FROM fired f "
            "JOIN sagas s ON s.id = f.saga_id"
        )
        rows = await cur.fetchall()
    assert rows == [{"on_time": True, "owner": None, "status": "completed"}]
    (step_row,) = [r for r in (await store_steps(pool, saga_id))]
    assert step_row["owner"] == "after"


async def store_steps(pool: db.Pool, saga_id: str) -> list[db.Row]:
    async with db.connection(pool) as conn:
        found = await store.load(conn, saga_id)
    assert found is not None
    return found[1]


async def test_a_saga_of_an_unknown_kind_is_handed_back(pool: db.Pool) -> None:
    """A worker that does not know a saga's definition leaves it for one that does."""

    async def noop(ctx: StepContext) -> dict[str, Any]:
        return {}

    saga = SagaDefinition("elsewhere", (Step("s", noop),))
    saga_id = await SagaEngine(pool).schedule(saga, {})
    (result,) = await SagaEngine(pool, owner="ignorant").run_due()
    assert result.deferred is not None
    row = await saga_row(pool, saga_id)
    assert row["status"] == "running" and row["owner"] is None
    assert await log_of(pool, saga_id) == []


async def test_saga_statuses_are_one_list_in_the_engine_the_api_and_the_database(
    pool: db.Pool,
) -> None:
    """The engine's status enum, the API's filter values and the CHECK constraint on
    ``sagas.status`` name the same statuses."""
    async with db.connection(pool) as conn:
        cur = await conn.execute(
            "SELECT pg_get_constraintdef(c.oid) AS d FROM pg_constraint c "
            "WHERE c.conrelid = 'sagas'::regclass AND c.contype = 'c' "
            "AND pg_get_constraintdef(c.oid) LIKE '%%status%%'"
        )
        (row,) = await cur.fetchall()
    in_database = set(re.findall(r"'(\w+)'", row["d"]))
    assert in_database == {s.value for s in SagaStatus} == set(store.SAGA_STATUSES)


# -- group commit ---------------------------------------------------------------------------


def gated_saga(name: str, gate: asyncio.Event, runs: list[tuple[str, int]]) -> SagaDefinition:
    """Three call steps; the first waits at ``gate``, so the sagas reach their first
    checkpoint together. ``runs`` gets (saga id, step) for every execution."""

    def step(i: int) -> Any:
        async def run(ctx: StepContext) -> dict[str, Any]:
            runs.append((ctx.saga_id, i))
            if i == 0:
                await gate.wait()
            return {f"out{i}": True}

        return run

    return SagaDefinition(name, tuple(Step(f"s{i}", step(i), timeout=30) for i in range(3)))


async def first_step_commits(pool: db.Pool, ids: list[str]) -> dict[str, str]:
    """For each saga, the transaction that wrote the end of its first step."""
    async with db.connection(pool) as conn:
        cur = await conn.execute(
            "SELECT saga_id::text AS id, xmin::text AS tx FROM saga_steps"
            " WHERE saga_id = ANY(%s::uuid[]) AND step_index = 0 AND status = 'completed'",
            (ids,),
        )
        return {row["id"]: row["tx"] for row in await cur.fetchall()}


async def started(runs: list[tuple[str, int]], n: int) -> list[str]:
    """The ids of the ``n`` sagas once each is inside its first step."""
    await eventually(lambda: len(runs) == n)
    return [saga_id for saga_id, _ in runs]


async def test_checkpoints_of_sagas_waiting_together_share_one_commit(pool: db.Pool) -> None:
    """Twenty sagas finish their first step at the same moment: their checkpoints are
    written by one or two transactions, not twenty, and every saga completes."""
    gate, runs = asyncio.Event(), list[tuple[str, int]]()
    saga = gated_saga("group", gate, runs)
    engine = SagaEngine(pool)
    tasks = [asyncio.create_task(engine.run(saga, {"i": i})) for i in range(20)]
    ids = await started(runs, 20)
    gate.set()
    results = await asyncio.gather(*tasks)
    assert all(r.ok for r in results)
    commits = await first_step_commits(pool, ids)
    assert len(commits) == 20
    assert len(set(commits.values())) <= 2


async def test_a_refused_checkpoint_in_a_group_fails_only_its_own_saga(pool: db.Pool) -> None:
    """One of ten sagas whose checkpoints commit together was claimed by someone else
    meanwhile (its epoch moved on): its fence fails the shared transaction, yet only that
    saga gets LeaseLostError; the other nine commit and complete."""
    gate, runs = asyncio.Event(), list[tuple[str, int]]()
    saga = gated_saga("group", gate, runs)
    engine = SagaEngine(pool)
    tasks = [asyncio.create_task(engine.run(saga, {"i": i})) for i in range(10)]
    ids = await started(runs, 10)
    stale = ids[4]
    async with db.connection(pool) as conn:
        await conn.execute("UPDATE sagas SET epoch = epoch + 1 WHERE id = %s", (stale,))
    gate.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    by_id = dict(zip(ids, outcomes, strict=True))
    assert isinstance(by_id.pop(stale), LeaseLostError)
    assert all(isinstance(r, SagaResult) and r.ok for r in by_id.values())
    assert await log_of(pool, stale) == [(0, "execute", 1, "running")]
    assert len(await first_step_commits(pool, list(by_id))) == 9


async def test_a_crash_after_a_group_commits_loses_nothing_and_repeats_nothing(
    pool: db.Pool, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process dies right after a group's commit, before any saga hears it is durable.
    Another process resumes them all: each finished first step is kept (it is not run
    again) and every step runs exactly once in all."""
    gate, runs = asyncio.Event(), list[tuple[str, int]]()
    saga = gated_saga("group", gate, runs)
    clock = ManualClock()
    doomed = SagaEngine(pool, owner="doomed", lease=15.0, clock=clock)
    tasks = [asyncio.create_task(doomed.run(saga, {"i": i})) for i in range(10)]
    ids = await started(runs, 10)
    committed: list[int] = []
    together = db.GroupCommit._together

    async def commit_then_die(self: db.GroupCommit, units: list[Any]) -> None:
        await together(self, units)
        committed.append(len(units))
        raise asyncio.CancelledError  # the process is gone: no saga is told

    monkeypatch.setattr(db.GroupCommit, "_together", commit_then_die)
    gate.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(o, asyncio.CancelledError) for o in outcomes)
    assert committed and committed[0] > 1  # one group, several sagas, committed
    monkeypatch.undo()
    clock.advance(15.0)
    async with second_pool(database_url) as other:
        heir = SagaEngine(other, owner="heir", definitions=[saga], clock=clock)
        results = await heir.run_due()
    assert sorted(r.saga_id for r in results) == sorted(ids)
    assert all(r.ok for r in results)
    assert sorted(runs) == sorted((saga_id, i) for saga_id in ids for i in range(3))
    for saga_id in ids:
        assert (await log_of(pool, saga_id))[0] == (0, "execute", 1, "completed")
