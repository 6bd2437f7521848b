"""The saga planner: from a saga's status and step log, what happens next.

Pure: no I/O, no asyncio, no clock. The executor (``engine``) asks it what to do, does it
durably, appends what happened to the log, and asks again::

    running       first step without a completed attempt ── Run(i, next attempt)
                  every step completed ──────────────────── Finish(completed)
    a step fails for good, or an operator cancels ───────── stop(): compensating with
                                                             undo_plan(), or failed if empty
    compensating  first step of the plan not yet undone ─── Undo(j, next attempt)
                  every planned step undone ─────────────── Finish(compensated)
    a compensation round fails ──────────────────────────── Park(delay), or after the last
                                                             round Finish(compensation_failed)

There is one undo plan (``undo_plan``), for a failure and a cancel alike; it is stored with
the saga, so a resumed saga finishes the same plan. Numbering continues from the log: an
interrupted, deferred or failed attempt is followed by the next number.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from proveniq_core.resilience.backoff import Backoff
from proveniq_core.saga.model import (
    Attempt,
    AttemptStatus,
    Phase,
    SagaDefinition,
    SagaStatus,
)

__all__ = [
    "Action",
    "Finish",
    "Park",
    "Run",
    "SagaState",
    "Undo",
    "after_failed_round",
    "next_action",
    "next_attempt",
    "stop",
    "undo_plan",
]


@dataclass(frozen=True, slots=True)
class Run:
    """Run step ``index`` forwards, from attempt ``attempt``."""

    index: int
    attempt: int


@dataclass(frozen=True, slots=True)
class Undo:
    """Compensate step ``index``, from attempt ``attempt``."""

    index: int
    attempt: int


@dataclass(frozen=True, slots=True)
class Finish:
    """The saga ends with ``status``."""

    status: SagaStatus


@dataclass(frozen=True, slots=True)
class Park:
    """Try the compensation again ``delay`` seconds from now."""

    delay: float


Action = Run | Undo | Finish | Park


@dataclass(frozen=True, slots=True)
class SagaState:
    """What the planner reads: the saga's status, its undo plan (once it has one), its log."""

    status: SagaStatus
    log: tuple[Attempt, ...] = ()
    undo: tuple[int, ...] = ()

    def record(self, attempt: Attempt) -> SagaState:
        """This state with ``attempt`` appended to the log."""
        return replace(self, log=(*self.log, attempt))


def _of(log: Iterable[Attempt], index: int, phase: Phase) -> list[Attempt]:
    return [a for a in log if a.index == index and a.phase is phase]


def _done(log: Iterable[Attempt], index: int, phase: Phase) -> bool:
    return any(a.status is AttemptStatus.COMPLETED for a in _of(log, index, phase))


def _last(log: Iterable[Attempt], index: int, phase: Phase) -> Attempt | None:
    return max(_of(log, index, phase), key=lambda a: a.number, default=None)


def next_attempt(log: Iterable[Attempt], index: int, phase: Phase) -> int:
    """The number of the next attempt of step ``index`` in ``phase``: one past the last."""
    last = _last(log, index, phase)
    return 1 if last is None else last.number + 1


def next_action(definition: SagaDefinition, state: SagaState) -> Run | Undo | Finish:
    """What a saga in ``state`` does next."""
    if state.status is SagaStatus.RUNNING:
        for index in range(len(definition.steps)):
            if not _done(state.log, index, Phase.EXECUTE):
                return Run(index, next_attempt(state.log, index, Phase.EXECUTE))
        return Finish(SagaStatus.COMPLETED)
    if state.status is SagaStatus.COMPENSATING:
        for index in state.undo:
            if not _done(state.log, index, Phase.COMPENSATE):
                return Undo(index, next_attempt(state.log, index, Phase.COMPENSATE))
        return Finish(SagaStatus.COMPENSATED)
    return Finish(state.status)


def undo_plan(definition: SagaDefinition, log: Iterable[Attempt]) -> tuple[int, ...]:
    """What undoing the saga compensates, in order: its completed steps that can be undone,
    last first — preceded by the step it stopped at when that step is not transactional (a
    transactional step that did not complete left nothing behind), has a compensation, and
    its last attempt may have taken effect: the process died in it, or the saga's
    ``in_doubt`` rule says so of its error."""
    log = tuple(log)
    steps = definition.steps
    done = [i for i in range(len(steps)) if _done(log, i, Phase.EXECUTE)]
    plan = [i for i in reversed(done) if steps[i].compensate is not None]
    stopped = next((i for i in range(len(steps)) if i not in done), None)
    if stopped is not None:
        step, last = steps[stopped], _last(log, stopped, Phase.EXECUTE)
        if not step.transactional and step.compensate is not None and last is not None:
            interrupted = last.status is AttemptStatus.INTERRUPTED
            if interrupted or (last.error is not None and definition.in_doubt(last.error)):
                plan.insert(0, stopped)
    return tuple(plan)


def stop(definition: SagaDefinition, state: SagaState) -> SagaState:
    """A running saga that goes no further (a step failed for good, or an operator cancels):
    compensating with its undo plan, or failed when there is nothing to undo."""
    plan = undo_plan(definition, state.log)
    if not plan:
        return replace(state, status=SagaStatus.FAILED)
    return replace(state, status=SagaStatus.COMPENSATING, undo=plan)


def after_failed_round(rounds: int, limit: int, backoff: Backoff) -> Park | Finish:
    """After compensation round ``rounds`` (1-based) of ``limit`` failed: try again after the
    backoff, or, after the last round, end ``compensation_failed``."""
    if rounds < limit:
        return Park(backoff.delay(rounds - 1))
    return Finish(SagaStatus.COMPENSATION_FAILED)
