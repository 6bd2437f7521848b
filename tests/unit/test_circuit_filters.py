"""What each circuit counts, and the key cache that lets operators in while the ledger is down."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg_pool import PoolTimeout

from proveniq_core import db
from proveniq_core.errors import (
    BrokerUnreachableError,
    LedgerConflictError,
    LedgerConstraintError,
    LedgerDownError,
    LedgerSaturatedError,
    LockerHardwareError,
    LockerOfflineError,
    LockerTimeoutError,
    LockerUnreachableError,
    ValidationFailedError,
)
from proveniq_core.ledger.keys import KeyCache, Principal
from proveniq_core.locker.gateway import DEVICE_BREAKER, FLEET_BREAKER
from proveniq_core.resilience.breaker import CircuitOpenError


def caused(exc: Exception, cause: BaseException) -> Exception:
    """``exc`` as if raised ``from cause``."""
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    ("exc", "counts"),
    [
        (psycopg.OperationalError("connection refused"), True),
        (psycopg.InterfaceError("the connection is closed"), True),
        (PoolTimeout("couldn't get a connection after 5.00 sec"), True),
        (pg_errors.AdminShutdown(), True),
        (pg_errors.ConnectionFailure(), True),
        (pg_errors.TooManyConnections(), True),
        (LedgerDownError(), True),
        (caused(LedgerDownError(), psycopg.OperationalError()), True),
        (caused(RuntimeError("step"), caused(LedgerDownError(), PoolTimeout())), True),
        (pg_errors.UniqueViolation(), False),
        (caused(LedgerConstraintError(), pg_errors.CheckViolation()), False),
        (caused(LedgerConflictError(), pg_errors.SerializationFailure()), False),
        (caused(LedgerDownError(), pg_errors.LockNotAvailable()), False),
        (caused(LedgerDownError(), pg_errors.QueryCanceled()), False),
        (caused(LedgerDownError(), CircuitOpenError("ledger", 3.0)), False),
        (LedgerSaturatedError(5.0), False),
        (caused(RuntimeError("step"), LedgerSaturatedError(5.0)), False),
        (ValidationFailedError(), False),
    ],
)
def test_the_ledger_circuit_counts_only_an_unreachable_database(
    exc: Exception, counts: bool
) -> None:
    """Connection-level failures count, however wrapped; data, conflicts and locks never."""
    assert db.LEDGER_BREAKER.counts(exc) is counts


@pytest.mark.parametrize(
    ("exc", "fleet", "device"),
    [
        (BrokerUnreachableError(), True, False),
        (LockerOfflineError(), False, True),
        (LockerTimeoutError(), False, True),
        (LockerUnreachableError("circuit 'locker:x' is open"), False, False),
        (LockerHardwareError(fault="hardware_fault"), False, False),
        (ValidationFailedError(), False, False),
    ],
)
def test_broker_failures_count_for_the_fleet_and_silence_for_the_device(
    exc: Exception, fleet: bool, device: bool
) -> None:
    """The fleet circuit counts the broker's failures, a device's its own; answers count for
    neither, nor does a refusal by an open circuit."""
    assert (FLEET_BREAKER.counts(exc), DEVICE_BREAKER.counts(exc)) == (fleet, device)


def test_the_key_cache_recalls_a_verified_key_within_its_ttl_only() -> None:
    """A key is recalled with its exact secret for ttl seconds, and not once forgotten."""
    now = [0.0]
    cache = KeyCache(ttl=60.0, clock=lambda: now[0])
    principal = Principal("k1", "acme", frozenset({"ops:read"}))
    cache.remember("pk_k1_s3cret", principal)

    assert cache.recall("pk_k1_s3cret") == principal
    assert cache.recall("pk_k1_guess") is None
    assert cache.recall("pk_k2_s3cret") is None
    assert cache.recall("not-a-key") is None
    now[0] = 60.5
    assert cache.recall("pk_k1_s3cret") is None

    cache.remember("pk_k1_s3cret", principal)
    cache.forget("pk_k1_whatever")  # revoked: forgotten by key id
    assert cache.recall("pk_k1_s3cret") is None
