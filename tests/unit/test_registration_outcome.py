"""What a registration saga's run means for its request (the typed outcome the route maps to
201/202/502), and the hooks by which the registration saga speaks to the engine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from proveniq_core.errors import (
    CoreError,
    LedgerConstraintError,
    LockerHardwareError,
    LockerTimeoutError,
    LockerUnreachableError,
    PartialCommitError,
    PostCommitTimeoutError,
)
from proveniq_core.saga.model import HOLD, Defer, SagaResult, SagaStatus, StepError
from proveniq_core.saga.registration import (
    Outcome,
    alert_subject,
    in_doubt,
    log_context,
    outcome,
)

ASSET, VERIFICATION = "a-1", "v-1"


def deferred(cause: CoreError, delay: float) -> SagaResult:
    return SagaResult(
        "s-1", SagaStatus.RUNNING, {}, deferred=delay, deferral=Defer(delay, cause=cause)
    )


def test_a_completed_saga_is_linked() -> None:
    """Every step done: linked, with the locker's id and no warning."""
    result = SagaResult("s-1", SagaStatus.COMPLETED, {"lockerId": "L-9"})
    done = outcome(result, ASSET, VERIFICATION)
    assert (done.outcome, done.locker_id, done.warning, done.error) == (
        Outcome.LINKED,
        "L-9",
        None,
        None,
    )
    assert (done.asset_id, done.verification_id) == (ASSET, VERIFICATION)


def test_a_late_verification_is_linked_with_a_warning() -> None:
    """Parked after the link committed (verification queued late): linked, with a warning."""
    late = PostCommitTimeoutError("verification queued late")
    done = outcome(deferred(late, 1.0), ASSET, VERIFICATION)
    assert done.outcome is Outcome.LINKED and done.warning is late


def test_a_hardware_fault_is_held_for_an_operator() -> None:
    """The device refused: held, answering with the fault (502), which names the asset."""
    fault = LockerHardwareError(fault="jammed")
    done = outcome(deferred(fault, HOLD), ASSET, VERIFICATION)
    assert done.outcome is Outcome.HELD and done.error is fault
    assert fault.asset_id == ASSET and fault.mode.http_status == 502


@pytest.mark.parametrize("cause", [LockerTimeoutError(), LockerUnreachableError()])
def test_a_parked_link_is_deferred_until_its_retry(cause: CoreError) -> None:
    """A timeout or an unreachable device: deferred, with the next try and the reason."""
    before = datetime.now(UTC)
    done = outcome(deferred(cause, 300.0), ASSET, VERIFICATION)
    assert done.outcome is Outcome.DEFERRED and done.reason == cause.code
    assert done.retry_at is not None
    assert (
        before + timedelta(seconds=300)
        <= done.retry_at
        <= datetime.now(UTC) + timedelta(seconds=300)
    )


def test_a_link_held_until_woken_is_deferred_without_a_retry_time() -> None:
    """An exhausted entry holds the saga: deferred, with no retry time to promise."""
    done = outcome(deferred(LockerTimeoutError(), HOLD), ASSET, VERIFICATION)
    assert done.outcome is Outcome.DEFERRED and done.retry_at is None


@pytest.mark.parametrize("status", [SagaStatus.COMPENSATING, SagaStatus.COMPENSATION_FAILED])
def test_a_failure_still_being_undone_is_a_partial_commit(status: SagaStatus) -> None:
    """Steps committed and are not undone yet: failed with E_PARTIAL_COMMIT, caused by the
    step's error and naming the asset."""
    cause = LockerHardwareError()
    result = SagaResult("s-1", status, {}, failed_step="update_status", error=cause)
    done = outcome(result, ASSET, VERIFICATION)
    assert done.outcome is Outcome.FAILED and isinstance(done.error, PartialCommitError)
    assert done.error.asset_id == ASSET and done.error.__cause__ is cause
    assert "update_status" in str(done.error)


def test_an_undone_failure_answers_with_its_own_error() -> None:
    """Compensated: the step's own error, naming the (now compensated) asset; failed with
    nothing written: the error without an asset."""
    cause = LedgerConstraintError()
    result = SagaResult("s-1", SagaStatus.COMPENSATED, {}, error=cause)
    done = outcome(result, ASSET, VERIFICATION)
    assert done.outcome is Outcome.FAILED and done.error is cause and cause.asset_id == ASSET
    nothing = LedgerConstraintError()
    failed = outcome(SagaResult("s-1", SagaStatus.FAILED, {}, error=nothing), ASSET, "v")
    assert failed.error is nothing and nothing.asset_id is None


def test_an_unexpected_exception_becomes_an_internal_error() -> None:
    """A failure outside the taxonomy answers E_INTERNAL, caused by it."""
    boom = RuntimeError("boom")
    result = SagaResult("s-1", SagaStatus.COMPENSATED, {}, failed_step="link_locker", error=boom)
    done = outcome(result, ASSET, VERIFICATION)
    assert done.outcome is Outcome.FAILED and done.error is not None
    assert done.error.code == "E_INTERNAL" and done.error.__cause__ is boom


@pytest.mark.parametrize(
    ("code", "doubt"),
    [
        ("E_TIMEOUT", True),
        ("E_LOCKER_TIMEOUT", True),
        ("E_LOCKER_UNREACHABLE", True),
        ("E_LOCKER_HARDWARE", False),
        ("E_LEDGER_DOWN", False),
        ("E_INTERNAL", False),
    ],
)
def test_a_link_is_in_doubt_unless_the_device_answered_or_nothing_was_sent(
    code: str, doubt: bool
) -> None:
    """No answer in time or no device to answer: the link may have happened; a fault is
    the device's answer, and a ledger failure comes before any command."""
    assert in_doubt(StepError(code, "X", "")) is doubt


def test_log_lines_and_alerts_name_the_asset_and_locker() -> None:
    """The saga's data gives its log lines asset, locker and request ids, and alerts the
    asset and locker; ids it does not have are left out of the log context."""
    data = {"assetId": "a-1", "lockerRef": "L-1", "requestId": "r-1", "name": "x"}
    assert log_context(data) == {"asset_id": "a-1", "locker_ref": "L-1", "request_id": "r-1"}
    assert log_context({"assetId": "a-1"}) == {"asset_id": "a-1"}
    assert alert_subject(data) == {"assetId": "a-1", "lockerRef": "L-1"}
