"""What a saga is made of: its steps, the hooks its domain supplies, its log, and its result.

Nothing here runs anything. ``planner`` decides from these records what happens next and
``engine`` does it, durably.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from proveniq_core import db
from proveniq_core.errors import ConflictError, CoreError

HOLD = math.inf
"""A delay that parks a saga until something wakes it (``SagaEngine.wake``, an operator)."""

TIMEOUT = "E_TIMEOUT"
"""The code of a step (or compensation) that did not finish within its timeout."""
INTERRUPTED = "E_INTERRUPTED"
"""The code the claim writes on an attempt its owner left running (the process died)."""


class SagaStatus(StrEnum):
    """Where a saga is; the database's CHECK constraint on ``sagas.status`` has the same list."""

    RUNNING = "running"
    COMPLETED = "completed"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self not in (SagaStatus.RUNNING, SagaStatus.COMPENSATING)


class Phase(StrEnum):
    """Which way a step runs: forwards, or undoing what it did."""

    EXECUTE = "execute"
    COMPENSATE = "compensate"


class AttemptStatus(StrEnum):
    """How one attempt of a step ended (``running`` while it has not)."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    DEFERRED = "deferred"
    INTERRUPTED = "interrupted"


class LeaseLostError(ConflictError):
    """This process no longer holds the saga: its lease expired and another owner claimed it.

    A registration request that meets it answers 202 with the asset (another process is
    finishing the work); an operator's action, 409."""


WriteFn = Callable[[db.Conn], Awaitable[float]]


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
    """One saga step. ``retries`` counts attempts after the first; ``timeout`` is per attempt;
    ``backoff`` is the first retry's delay (doubling)."""

    name: str
    execute: StepFn
    compensate: StepFn | None = None
    timeout: float = 5.0
    retries: int = 0
    transactional: bool = False
    backoff: float = 0.05


@dataclass(frozen=True, slots=True)
class StepError:
    """A step's failure as its log row records it: the taxonomy code (none when a step
    deferred without a cause), the exception's type and its message."""

    code: str | None
    type: str | None
    message: str

    @classmethod
    def of(cls, exc: BaseException) -> StepError:
        doc = error_doc(exc)
        return cls(doc["code"], doc["type"], doc["message"])

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any] | None) -> StepError | None:
        if not doc:
            return None
        return cls(doc.get("code"), doc.get("type"), str(doc.get("message", "")))


InDoubt = Callable[[StepError], bool]
Context = Callable[[Mapping[str, Any]], dict[str, Any]]


def timed_out(error: StepError) -> bool:
    """The default in-doubt rule: a step that gave no answer in time may have acted."""
    return error.code == TIMEOUT


def no_context(data: Mapping[str, Any]) -> dict[str, Any]:
    """The default log context and alert subject: nothing beyond the saga's own ids."""
    return {}


@dataclass(frozen=True, slots=True)
class SagaDefinition:
    """A saga's steps, in order, and the hooks by which its domain speaks to the engine.

    ``in_doubt``: whether a step that stopped with this error may have taken effect anyway,
    so that undoing the saga undoes that step too (an attempt the process died in always
    is). ``log_context``: ids from the saga's data that its log lines carry (keys already
    bound by the caller win). ``alert_subject``: ids from its data that an alert about it
    names.
    """

    name: str
    steps: tuple[Step, ...]
    in_doubt: InDoubt = timed_out
    log_context: Context = no_context
    alert_subject: Context = no_context

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError(f"saga {self.name!r} has no steps")


@dataclass(frozen=True, slots=True)
class Attempt:
    """One row of a saga's step log: attempt ``number`` of step ``index`` in ``phase``."""

    index: int
    phase: Phase
    number: int
    status: AttemptStatus
    error: StepError | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Attempt:
        return cls(
            row["step_index"],
            Phase(row["phase"]),
            row["attempt"],
            AttemptStatus(row["status"]),
            StepError.from_doc(row["error"]),
        )


@dataclass(slots=True)
class SagaResult:
    """Where a run stopped. ``error`` is the step failure that triggered compensation;
    ``deferred`` is set when the saga was parked on its timer (not finished)."""

    saga_id: str
    status: SagaStatus
    data: dict[str, Any]
    failed_step: str | None = None
    error: BaseException | None = None
    compensation_errors: list[str] = field(default_factory=list)
    deferred: float | None = None
    deferral: Defer | None = None

    @property
    def ok(self) -> bool:
        return self.status == SagaStatus.COMPLETED


def error_doc(exc: BaseException) -> dict[str, Any]:
    """An exception as a log row, an alert or a retry-queue entry records it."""
    if isinstance(exc, CoreError):
        code = exc.code
    else:
        code = TIMEOUT if isinstance(exc, TimeoutError) else "E_INTERNAL"
    return {"code": code, "type": type(exc).__name__, "message": str(exc) or type(exc).__name__}


def retryable(exc: BaseException) -> bool:
    """Whether a failed execution is worth another attempt within the step."""
    if isinstance(exc, CoreError):
        return exc.mode.retryable
    return isinstance(exc, TimeoutError)
