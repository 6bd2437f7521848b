"""The saga planner, alone: from a step log to the next action, with no database.

The planner keeps no state, so every decision it makes is a resume from the log. The
properties below drive whole sagas through it (``simulate``), with steps that fail and
processes that die at any point, and check what a user of the engine relies on.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from proveniq_core.resilience.backoff import Backoff
from proveniq_core.saga.model import (
    INTERRUPTED,
    Attempt,
    AttemptStatus,
    Phase,
    SagaDefinition,
    SagaStatus,
    Step,
    StepContext,
    StepError,
)
from proveniq_core.saga.planner import (
    Finish,
    Park,
    Run,
    SagaState,
    Undo,
    after_failed_round,
    next_action,
    stop,
    undo_plan,
)

CODES = ("E_TIMEOUT", "E_LOCKER_TIMEOUT", "E_LOCKER_HARDWARE", "E_LEDGER_CONSTRAINT", None)
ROUNDS = 3
EXECUTE, COMPENSATE = Phase.EXECUTE, Phase.COMPENSATE
COMPLETED, FAILED = AttemptStatus.COMPLETED, AttemptStatus.FAILED


async def _noop(ctx: StepContext) -> dict[str, Any]:
    return {}


def saga(shapes: list[tuple[bool, bool]], doubtful: frozenset[str | None]) -> SagaDefinition:
    """A saga of steps shaped (transactional, compensable), in doubt on ``doubtful`` codes."""
    steps = tuple(
        Step(f"s{i}", _noop, _noop if compensable else None, transactional=transactional)
        for i, (transactional, compensable) in enumerate(shapes)
    )
    return SagaDefinition("planned", steps, in_doubt=lambda error: error.code in doubtful)


@st.composite
def definitions(draw: st.DrawFn) -> SagaDefinition:
    shapes = draw(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=6))
    return saga(shapes, draw(st.frozensets(st.sampled_from(CODES))))


def error(status: AttemptStatus, code: str | None) -> StepError | None:
    if status is AttemptStatus.INTERRUPTED:
        return StepError(INTERRUPTED, "LeaseExpired", "the owner stopped")
    if status in (FAILED, AttemptStatus.DEFERRED):
        return StepError(code, "Error", "it stopped")
    return None


@st.composite
def running_logs(draw: st.DrawFn, n: int) -> tuple[Attempt, ...]:
    """The log of a running saga of ``n`` steps: some steps completed (after attempts that
    failed, deferred or were interrupted), then perhaps attempts of the next, none done."""
    unfinished = st.sampled_from(
        [FAILED, AttemptStatus.DEFERRED, AttemptStatus.INTERRUPTED, AttemptStatus.RUNNING]
    )
    log: list[Attempt] = []
    done = draw(st.integers(0, n))
    for index in range(min(done + 1, n)):
        tries = draw(st.lists(st.tuples(unfinished, st.sampled_from(CODES)), max_size=3))
        for number, (status, code) in enumerate(tries, start=1):
            log.append(Attempt(index, EXECUTE, number, status, error(status, code)))
        if index < done:
            log.append(Attempt(index, EXECUTE, len(tries) + 1, COMPLETED))
    return tuple(log)


def completed(log: tuple[Attempt, ...], phase: Phase) -> list[int]:
    return [a.index for a in log if a.phase is phase and a.status is COMPLETED]


def stopped_at(definition: SagaDefinition, log: tuple[Attempt, ...]) -> int | None:
    action = next_action(definition, SagaState(SagaStatus.RUNNING, log))
    return action.index if isinstance(action, Run) else None


# -- the undo plan ----------------------------------------------------------------------------


@settings(deadline=None)
@given(definition=definitions(), data=st.data())
def test_the_undo_plan_undoes_the_completed_steps_last_first(
    definition: SagaDefinition, data: st.DataObject
) -> None:
    """For any log, the plan compensates exactly the completed steps that can be undone, in
    reverse order — after the step the saga stopped at, when that one is in the plan."""
    log = data.draw(running_logs(len(definition.steps)))
    plan = undo_plan(definition, log)
    done = completed(log, EXECUTE)
    expected = [i for i in reversed(done) if definition.steps[i].compensate is not None]
    stopped = stopped_at(definition, log)
    assert list(plan) in (expected, [stopped, *expected])
    assert len(set(plan)) == len(plan)


@settings(deadline=None)
@given(definition=definitions(), data=st.data())
def test_the_stopped_step_is_undone_exactly_when_it_may_have_acted(
    definition: SagaDefinition, data: st.DataObject
) -> None:
    """The step the saga stopped at is undone first iff it is not transactional, can be
    undone, was attempted, and its last attempt was interrupted or is in doubt by the
    saga's own rule."""
    log = data.draw(running_logs(len(definition.steps)))
    stopped = stopped_at(definition, log)
    plan = undo_plan(definition, log)
    if stopped is None:
        assert not plan or plan[0] in completed(log, EXECUTE)
        return
    step = definition.steps[stopped]
    attempts = [a for a in log if a.index == stopped]
    last = max(attempts, key=lambda a: a.number, default=None)
    may_have_acted = last is not None and (
        last.status is AttemptStatus.INTERRUPTED
        or (last.error is not None and definition.in_doubt(last.error))
    )
    expected = not step.transactional and step.compensate is not None and may_have_acted
    assert (stopped in plan) == expected
    if expected:
        assert plan[0] == stopped


@settings(deadline=None)
@given(definition=definitions(), data=st.data())
def test_stopping_compensates_by_that_plan_or_fails_when_it_is_empty(
    definition: SagaDefinition, data: st.DataObject
) -> None:
    """A failure and an operator's cancel both stop the saga the one way: compensating by
    the undo plan, whose first step is what runs next; or failed with nothing to undo."""
    log = data.draw(running_logs(len(definition.steps)))
    stopped = stop(definition, SagaState(SagaStatus.RUNNING, log))
    plan = undo_plan(definition, log)
    if not plan:
        assert stopped.status is SagaStatus.FAILED
        assert next_action(definition, stopped) == Finish(SagaStatus.FAILED)
    else:
        assert (stopped.status, stopped.undo) == (SagaStatus.COMPENSATING, plan)
        assert next_action(definition, stopped) == Undo(plan[0], 1)


def test_a_timed_out_link_is_undone_first_a_refused_one_is_not() -> None:
    """Step 1 (a device command) timed out: it may have acted, so it is undone before step 0;
    refused by the device, only step 0 is undone; a transactional step never is."""
    definition = saga([(True, True), (False, True), (True, True)], frozenset({"E_TIMEOUT"}))
    done = Attempt(0, EXECUTE, 1, COMPLETED)
    timed_out = Attempt(1, EXECUTE, 1, FAILED, StepError("E_TIMEOUT", "TimeoutError", ""))
    refused = Attempt(1, EXECUTE, 1, FAILED, StepError("E_LOCKER_HARDWARE", "X", "jammed"))
    assert undo_plan(definition, [done, timed_out]) == (1, 0)
    assert undo_plan(definition, [done, refused]) == (0,)
    linked = Attempt(1, EXECUTE, 2, COMPLETED)
    failed_write = Attempt(2, EXECUTE, 1, FAILED, StepError("E_TIMEOUT", "TimeoutError", ""))
    assert undo_plan(definition, [done, refused, linked, failed_write]) == (1, 0)


# -- what runs next ----------------------------------------------------------------------------


def test_a_resumed_saga_runs_its_first_unfinished_step_with_the_next_number() -> None:
    """After step 0 completed and step 1 was interrupted twice, step 1 runs as attempt 3."""
    definition = saga([(False, True)] * 3, frozenset())
    log = (
        Attempt(0, EXECUTE, 1, COMPLETED),
        Attempt(1, EXECUTE, 1, AttemptStatus.INTERRUPTED),
        Attempt(1, EXECUTE, 2, AttemptStatus.INTERRUPTED),
    )
    assert next_action(definition, SagaState(SagaStatus.RUNNING, log)) == Run(1, 3)


def test_a_saga_with_every_step_done_finishes() -> None:
    """All steps completed: completed; all planned compensations done: compensated."""
    definition = saga([(False, True)] * 2, frozenset())
    ran = (Attempt(0, EXECUTE, 1, COMPLETED), Attempt(1, EXECUTE, 1, COMPLETED))
    assert next_action(definition, SagaState(SagaStatus.RUNNING, ran)) == Finish(
        SagaStatus.COMPLETED
    )
    undone = (*ran, Attempt(0, COMPENSATE, 1, COMPLETED))
    state = SagaState(SagaStatus.COMPENSATING, undone, undo=(0,))
    assert next_action(definition, state) == Finish(SagaStatus.COMPENSATED)


def test_failed_rounds_park_with_the_backoff_then_give_up() -> None:
    """Rounds 1 and 2 of 3 park for 5 s then 10 s; the third ends compensation_failed."""
    backoff = Backoff(5.0)
    assert after_failed_round(1, 3, backoff) == Park(5.0)
    assert after_failed_round(2, 3, backoff) == Park(10.0)
    assert after_failed_round(3, 3, backoff) == Finish(SagaStatus.COMPENSATION_FAILED)


# -- whole sagas, with failures and crashes ----------------------------------------------------


@dataclass
class World:
    """What each step does when it really runs: forwards, it fails with ``fails[i]`` (a
    code) or succeeds; its compensation fails its first ``undo_fails[i]`` runs."""

    fails: Mapping[int, str | None]
    undo_fails: Mapping[int, int]
    runs: dict[tuple[int, Phase], int] = field(default_factory=dict)

    def outcome(self, index: int, phase: Phase) -> str | None:
        key = (index, phase)
        self.runs[key] = self.runs.get(key, 0) + 1
        if phase is EXECUTE:
            return self.fails.get(index)
        return "E_UNDO" if self.runs[key] <= self.undo_fails.get(index, 0) else None


def simulate(
    definition: SagaDefinition, world: World, crashes: frozenset[int]
) -> tuple[SagaStatus, SagaState]:
    """Drive a saga through the planner as the engine does; at each decision in ``crashes``
    the process dies before the attempt's outcome is recorded (the claim then marks it
    interrupted) and the next decision is a resume from the log."""
    state, rounds = SagaState(SagaStatus.RUNNING), 0
    for decision in itertools.count():
        assert decision < 500, "the saga never ends"
        action = next_action(definition, state)
        if isinstance(action, Finish):
            return action.status, state
        phase = EXECUTE if isinstance(action, Run) else COMPENSATE
        again = [a for a in state.log if (a.index, a.phase) == (action.index, phase)]
        assert all(a.status is not COMPLETED for a in again), "a completed step runs again"
        if decision in crashes:
            dead = Attempt(action.index, phase, action.attempt, AttemptStatus.INTERRUPTED)
            state = state.record(dead)
            continue
        code = world.outcome(action.index, phase)
        if code is None:
            state = state.record(Attempt(action.index, phase, action.attempt, COMPLETED))
            continue
        failure = StepError(code, "Error", "it failed")
        state = state.record(Attempt(action.index, phase, action.attempt, FAILED, failure))
        if isinstance(action, Run):
            state = stop(definition, state)
        else:
            rounds += 1
            then = after_failed_round(rounds, ROUNDS, Backoff(1.0))
            if isinstance(then, Finish):
                return then.status, state
    raise AssertionError("unreachable")


@st.composite
def worlds(draw: st.DrawFn, n: int) -> World:
    fails = draw(st.dictionaries(st.integers(0, n - 1), st.sampled_from(CODES[:4]), max_size=2))
    undo_fails = draw(st.dictionaries(st.integers(0, n - 1), st.integers(0, ROUNDS + 1)))
    return World(fails, undo_fails)


@settings(max_examples=300, deadline=None)
@given(definition=definitions(), data=st.data())
def test_resuming_after_any_crash_reaches_the_same_end(
    definition: SagaDefinition, data: st.DataObject
) -> None:
    """However often the process dies, and wherever, the saga ends as it would have without
    a crash: same status, same steps done and undone in the same order, same plan."""
    n = len(definition.steps)
    world = data.draw(worlds(n))
    crashes = data.draw(st.frozensets(st.integers(0, 4 * n + 3 * ROUNDS)))
    calm = simulate(definition, World(world.fails, world.undo_fails), frozenset())
    crashed = simulate(definition, World(world.fails, world.undo_fails), crashes)
    assert crashed[0] == calm[0]
    assert crashed[1].undo == calm[1].undo
    done = [(a.index, a.phase) for a in calm[1].log if a.status is COMPLETED]
    assert [(a.index, a.phase) for a in crashed[1].log if a.status is COMPLETED] == done


@settings(max_examples=300, deadline=None)
@given(definition=definitions(), data=st.data())
def test_a_saga_ends_as_its_steps_and_compensations_decide(
    definition: SagaDefinition, data: st.DataObject
) -> None:
    """Completed when no step fails; otherwise the steps before the failure ran once each,
    in order, and exactly the plan was undone — compensated — unless a compensation kept
    failing for every round (compensation_failed), or there was nothing to undo (failed).
    Attempts of each step are numbered 1, 2, 3… without gaps, crashes included."""
    n = len(definition.steps)
    world = data.draw(worlds(n))
    crashes = data.draw(st.frozensets(st.integers(0, 4 * n + 3 * ROUNDS)))
    status, state = simulate(definition, world, crashes)
    ran = completed(state.log, EXECUTE)
    first_failure = min(world.fails, default=None)
    if first_failure is None:
        assert status is SagaStatus.COMPLETED and ran == list(range(n))
        return
    assert ran == list(range(first_failure))
    undone = completed(state.log, COMPENSATE)
    plan = list(state.undo)
    if not plan:
        assert status is SagaStatus.FAILED
    elif sum(world.undo_fails.get(i, 0) for i in plan) < ROUNDS:  # rounds are per saga
        assert status is SagaStatus.COMPENSATED and undone == plan
    else:
        assert status is SagaStatus.COMPENSATION_FAILED
        assert undone == plan[: len(undone)]
    for key in {(a.index, a.phase) for a in state.log}:
        numbers = [a.number for a in state.log if (a.index, a.phase) == key]
        assert numbers == list(range(1, len(numbers) + 1))
