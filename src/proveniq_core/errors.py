"""The failure taxonomy (docs/architecture.md §3) as data, and the exception tree built on it.

Every error a client can see carries one code from ``TAXONOMY``. The HTTP layer turns a
``CoreError`` into the envelope of docs/architecture.md §3; nothing else decides status codes.

    CoreError
    ├── LockerError                 (hardware subsystem; never fails the ledger)
    │   ├── LockerTimeoutError      E_LOCKER_TIMEOUT
    │   ├── LockerUnreachableError  E_LOCKER_UNREACHABLE (also a locker circuit open)
    │   │   ├── BrokerUnreachableError  the MQTT broker (counts on the fleet circuit)
    │   │   └── LockerOfflineError      the device (counts on its own circuit)
    │   └── LockerHardwareError     E_LOCKER_HARDWARE (also busy / unknown_asset replies)
    ├── LedgerError                 (software subsystem; fails closed)
    │   ├── LedgerConstraintError   E_LEDGER_CONSTRAINT
    │   ├── LedgerConflictError     E_LEDGER_CONFLICT
    │   └── LedgerDownError         E_LEDGER_DOWN (also the ledger circuit open)
    │       └── LedgerSaturatedError    every connection busy (overload, not an outage)
    ├── PartialCommitError          E_PARTIAL_COMMIT
    └── RequestError                (the client's request itself)
        ├── ValidationFailedError   E_VALIDATION
        ├── UnauthorizedError       E_UNAUTHORIZED
        ├── ForbiddenError          E_FORBIDDEN
        ├── NotFoundError           E_NOT_FOUND
        ├── ConflictError           E_CONFLICT
        ├── IdempotencyMismatchError  E_IDEMPOTENCY_MISMATCH
        ├── IdempotencyInFlightError  E_IDEMPOTENCY_IN_FLIGHT
        ├── MethodNotAllowedError   E_METHOD_NOT_ALLOWED
        ├── PayloadTooLargeError    E_PAYLOAD_TOO_LARGE
        └── RateLimitedError        E_RATE_LIMITED
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Severity = Literal["info", "warning", "degraded", "error", "critical"]


@dataclass(frozen=True, slots=True)
class FailureMode:
    """One row of the taxonomy: what a failure means and how Core answers it."""

    code: str
    severity: Severity
    action: str
    user_message: str
    sla_impact: bool
    http_status: int
    retryable: bool


TAXONOMY: dict[str, FailureMode] = {
    m.code: m
    for m in (
        FailureMode(
            "E_LOCKER_TIMEOUT",
            "degraded",
            "queue_for_retry",
            "Physical asset linking delayed. Will retry automatically.",
            False,
            202,
            True,
        ),
        FailureMode(
            "E_LOCKER_UNREACHABLE",
            "degraded",
            "create_pending_link",
            "Hardware temporarily unavailable. Asset created in pending state.",
            False,
            202,
            True,
        ),
        FailureMode(
            "E_LOCKER_HARDWARE",
            "critical",
            "alert_operations",
            "Hardware error detected. Operations team notified.",
            True,
            502,
            False,
        ),
        FailureMode(
            "E_LEDGER_CONSTRAINT",
            "error",
            "reject_request",
            "Invalid data. Please check your input.",
            False,
            422,
            False,
        ),
        FailureMode(
            "E_LEDGER_CONFLICT",
            "warning",
            "retry_with_backoff",
            "Concurrent modification detected. Please retry.",
            False,
            409,
            True,
        ),
        FailureMode(
            "E_LEDGER_DOWN",
            "critical",
            "circuit_breaker",
            "Service temporarily unavailable. Please try again later.",
            True,
            503,
            True,
        ),
        FailureMode(
            "E_PARTIAL_COMMIT",
            "critical",
            "compensating_transaction",
            "Operation partially completed. Automatic recovery in progress.",
            True,
            500,
            True,
        ),
        FailureMode(
            "E_TIMEOUT_POST_COMMIT",
            "warning",
            "async_completion",
            "Operation completed. Some updates may be delayed.",
            False,
            201,
            False,
        ),
        # Request errors: not in the taxonomy, same envelope.
        FailureMode(
            "E_VALIDATION", "error", "reject_request", "The request is invalid.", False, 422, False
        ),
        FailureMode(
            "E_UNAUTHORIZED",
            "error",
            "reject_request",
            "A valid API key is required.",
            False,
            401,
            False,
        ),
        FailureMode(
            "E_FORBIDDEN",
            "error",
            "reject_request",
            "This API key lacks the scope this operation needs.",
            False,
            403,
            False,
        ),
        FailureMode(
            "E_NOT_FOUND", "error", "reject_request", "No such resource.", False, 404, False
        ),
        FailureMode(
            "E_CONFLICT",
            "error",
            "reject_request",
            "The resource already exists or is in a conflicting state.",
            False,
            409,
            False,
        ),
        FailureMode(
            "E_IDEMPOTENCY_MISMATCH",
            "error",
            "reject_request",
            "This Idempotency-Key was used with a different request.",
            False,
            422,
            False,
        ),
        FailureMode(
            "E_IDEMPOTENCY_IN_FLIGHT",
            "warning",
            "retry_with_backoff",
            "A request with this Idempotency-Key is still in progress. Retry shortly.",
            False,
            409,
            True,
        ),
        FailureMode(
            "E_METHOD_NOT_ALLOWED",
            "error",
            "reject_request",
            "This method is not allowed here; see the Allow header.",
            False,
            405,
            False,
        ),
        FailureMode(
            "E_PAYLOAD_TOO_LARGE",
            "error",
            "reject_request",
            "The request's body is too large.",
            False,
            413,
            False,
        ),
        FailureMode(
            "E_HEADERS_TOO_LARGE",
            "error",
            "reject_request",
            "The request's headers are too large.",
            False,
            431,
            False,
        ),
        FailureMode(
            "E_RATE_LIMITED",
            "warning",
            "retry_with_backoff",
            "Too many requests. Retry after the time in Retry-After.",
            False,
            429,
            True,
        ),
        FailureMode(
            "E_INTERNAL",
            "critical",
            "alert_operations",
            "Internal error. Operations team notified.",
            True,
            500,
            True,
        ),
    )
}


class CoreError(Exception):
    """Internal error."""

    code = "E_INTERNAL"

    def __init__(
        self,
        message: str | None = None,
        *,
        details: Any = None,
        asset_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.message = message or self.mode.user_message
        self.details = details
        self.asset_id = asset_id
        self.retry_after = retry_after
        """Seconds until a retry may succeed, when known (a circuit's open time left)."""
        super().__init__(self.message)

    @property
    def mode(self) -> FailureMode:
        return TAXONOMY[self.code]


class LockerError(CoreError):
    """Locker subsystem failure."""


class LockerTimeoutError(LockerError):
    """The locker did not answer in time."""

    code = "E_LOCKER_TIMEOUT"


class LockerUnreachableError(LockerError):
    """The broker or the device is unreachable."""

    code = "E_LOCKER_UNREACHABLE"


class BrokerUnreachableError(LockerUnreachableError):
    """The MQTT broker is unreachable."""


class LockerOfflineError(LockerUnreachableError):
    """The locker is offline."""


class LockerHardwareError(LockerError):
    """The device answered with a fault."""

    code = "E_LOCKER_HARDWARE"

    def __init__(self, message: str | None = None, *, fault: str = "hardware_fault", **kw: Any):
        self.fault = fault
        super().__init__(message, **kw)


class LedgerError(CoreError):
    """Ledger subsystem failure."""


class LedgerConstraintError(LedgerError):
    """Invalid data or a constraint violation."""

    code = "E_LEDGER_CONSTRAINT"


class LedgerConflictError(LedgerError):
    """Optimistic-concurrency version mismatch."""

    code = "E_LEDGER_CONFLICT"


class LedgerDownError(LedgerError):
    """The database is unreachable."""

    code = "E_LEDGER_DOWN"


class LedgerSaturatedError(LedgerDownError):
    """No pooled connection came free in time while the pool kept serving others: the
    service is overloaded, the database is not down. Answered like ``E_LEDGER_DOWN`` (503,
    retryable) but never counted by the ledger circuit."""

    def __init__(self, waited: float) -> None:
        super().__init__(
            f"The ledger is saturated: no database connection came free within {waited:g} s. "
            "Retry shortly.",
            details={"reason": "saturated"},
            retry_after=1.0,
        )


class PartialCommitError(CoreError):
    """A later step failed after earlier ones committed."""

    code = "E_PARTIAL_COMMIT"


class PostCommitTimeoutError(CoreError):
    """A step after the link commit timed out; it completes asynchronously."""

    code = "E_TIMEOUT_POST_COMMIT"


class RequestError(CoreError):
    """The request cannot be served as sent."""


class ValidationFailedError(RequestError):
    """The request is invalid."""

    code = "E_VALIDATION"


class UnauthorizedError(RequestError):
    """Missing or invalid API key."""

    code = "E_UNAUTHORIZED"


class ForbiddenError(RequestError):
    """The key lacks a scope."""

    code = "E_FORBIDDEN"


class NotFoundError(RequestError):
    """No such resource (or not visible to this tenant)."""

    code = "E_NOT_FOUND"


class ConflictError(RequestError):
    """The resource exists or is in a conflicting state."""

    code = "E_CONFLICT"


class IdempotencyMismatchError(RequestError):
    """This Idempotency-Key was used with a different request (body or route)."""

    code = "E_IDEMPOTENCY_MISMATCH"


class IdempotencyInFlightError(RequestError):
    """A request with this Idempotency-Key is still in progress."""

    code = "E_IDEMPOTENCY_IN_FLIGHT"


class MethodNotAllowedError(RequestError):
    """The route exists, without this method."""

    code = "E_METHOD_NOT_ALLOWED"


class PayloadTooLargeError(RequestError):
    """The body is larger than ``PROVENIQ_MAX_BODY_BYTES``."""

    code = "E_PAYLOAD_TOO_LARGE"


class RateLimitedError(RequestError):
    """The key or the client address sent more requests than its rate limit allows."""

    code = "E_RATE_LIMITED"


__all__ = [
    "TAXONOMY",
    "BrokerUnreachableError",
    "ConflictError",
    "CoreError",
    "FailureMode",
    "ForbiddenError",
    "IdempotencyInFlightError",
    "IdempotencyMismatchError",
    "LedgerConflictError",
    "LedgerConstraintError",
    "LedgerDownError",
    "LedgerError",
    "LockerError",
    "LockerHardwareError",
    "LockerOfflineError",
    "LockerTimeoutError",
    "LockerUnreachableError",
    "MethodNotAllowedError",
    "NotFoundError",
    "PartialCommitError",
    "PayloadTooLargeError",
    "RateLimitedError",
    "RequestError",
    "UnauthorizedError",
    "ValidationFailedError",
]
