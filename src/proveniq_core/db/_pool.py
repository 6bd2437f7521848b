"""The pool, connections and transactions, named queries, and error translation.

Named queries live in ``sql/queries.sql`` under ``-- name --`` headers and are loaded once.

A pool may be put behind the ledger circuit breaker (``guard``): ``connection`` and
``transaction`` then ask the breaker first and, while it is open, raise ``LedgerDownError``
at once, without waiting on the pool.
"""

from __future__ import annotations

import asyncio
import re
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Final, LiteralString

import psycopg
import structlog
from psycopg import errors as pg_errors
from psycopg.rows import dict_row
from psycopg.types.datetime import TimestamptzLoader
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from proveniq_core.errors import (
    LedgerConflictError,
    LedgerConstraintError,
    LedgerDownError,
    LedgerSaturatedError,
)
from proveniq_core.observability import metrics
from proveniq_core.resilience.breaker import LEDGER, CircuitBreaker, CircuitOpenError, State

log = structlog.get_logger("proveniq_core.db")

Row = dict[str, Any]
Conn = psycopg.AsyncConnection[Row]
Pool = AsyncConnectionPool[Conn]

_HEADER = re.compile(r"^-- (\w+) --$", re.MULTILINE)


def _load_queries() -> dict[str, str]:
    text = resources.files("proveniq_core.sql").joinpath("queries.sql").read_text("utf-8")
    parts = _HEADER.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


class _Queries:
    """``queries["name"]`` returns the named SQL, typed for psycopg."""

    def __init__(self) -> None:
        self._q = _load_queries()

    def __getitem__(self, name: str) -> LiteralString:
        return self._q[name]


queries = _Queries()


def jsonb(value: Any) -> Jsonb:
    return Jsonb(value)


NEVER: Final = datetime.max.replace(tzinfo=UTC)
"""How a ``timestamptz`` of ``'infinity'`` loads (a saga held until woken)."""


class _InfinityLoader(TimestamptzLoader):
    """``timestamptz`` that loads ``'infinity'`` as ``NEVER`` rather than failing."""

    def load(self, data: Any) -> datetime:
        if bytes(data) == b"infinity":
            return NEVER
        return super().load(data)


psycopg.adapters.register_loader("timestamptz", _InfinityLoader)


async def open_pool(
    conninfo: str, *, min_size: int = 2, max_size: int = 20, timeout: float = 5.0
) -> Pool:
    """A pool; a caller waits ``timeout`` seconds for a connection, then ``LedgerDownError``."""
    pool: Pool = AsyncConnectionPool(
        conninfo,
        min_size=min_size,
        max_size=max_size,
        kwargs={"row_factory": dict_row, "autocommit": True},
        open=False,
        timeout=timeout,
        reconnect_timeout=0,
    )
    await pool.open(wait=False)
    return pool


def translate(exc: Exception) -> Exception:
    """The taxonomy error for a database failure (constraint, conflict, down), else ``exc``."""
    if isinstance(exc, pg_errors.IntegrityError | pg_errors.DataError):
        diag = exc.diag
        return LedgerConstraintError(
            "Invalid data. Please check your input.",
            details={"constraint": diag.constraint_name, "detail": diag.message_primary},
        )
    if isinstance(exc, pg_errors.SerializationFailure | pg_errors.DeadlockDetected):
        return LedgerConflictError()
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | TimeoutError):
        return LedgerDownError()  # a TimeoutError here: pool exhausted or server unreachable
    return exc


@contextmanager
def translate_errors() -> Iterator[None]:
    """Map database failures onto the taxonomy: constraint, conflict, or down."""
    try:
        yield
    except (psycopg.Error, TimeoutError) as exc:
        translated = translate(exc)
        if translated is exc:
            raise
        raise translated from exc


# SQLSTATEs of a server going away or refusing connections (not of a query that failed).
_DOWN_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300")


def is_ledger_down(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached: what the ledger circuit counts.

    Judged by the root of the ``raise ... from`` chain, so a translated or wrapped error counts
    as what caused it: a psycopg error without SQLSTATE (refused, closed, pool timeout) or of
    class 08, a server shutdown, too many connections; or a ``LedgerDownError`` raised as such.
    A constraint, a conflict, a lock or statement timeout, a refusal by the open circuit, a
    saturated pool (``LedgerSaturatedError``) never counts.
    """
    root = exc
    for _ in range(10):  # a chain that long (or a cycle) is not one we made
        if isinstance(root, LedgerSaturatedError):
            return False
        if root.__cause__ is None:
            break
        root = root.__cause__
    if isinstance(root, psycopg.Error):
        if root.sqlstate is None:
            return isinstance(root, psycopg.OperationalError | psycopg.InterfaceError)
        return root.sqlstate.startswith(_DOWN_SQLSTATES)
    return isinstance(root, LedgerDownError)


LEDGER_BREAKER: Final = LEDGER.with_filter(is_ledger_down)
"""The ledger circuit's config: its thresholds (docs/architecture.md §3), counting only
``is_ledger_down``."""

_circuits: weakref.WeakKeyDictionary[Pool, CircuitBreaker] = weakref.WeakKeyDictionary()
# When each pool last handed out a connection (time.monotonic()).
_handed_out: weakref.WeakKeyDictionary[Pool, float] = weakref.WeakKeyDictionary()
# The task holding a ledger permit in this context: its nested connections ride on that permit.
_permit_holder: ContextVar[asyncio.Task[Any] | None] = ContextVar("ledger_permit", default=None)


def guard(pool: Pool, breaker: CircuitBreaker) -> None:
    """Put ``pool`` behind ``breaker`` (the ledger circuit) for ``connection``/``transaction``.

    Each outermost connection a task takes is one call through the breaker, lasting as long as
    the block; one taken inside it (same task) is part of that call, so a failure counts once
    and a half-open probe is never refused by its own inner query.
    """
    _circuits[pool] = breaker


@asynccontextmanager
async def _through_circuit(pool: Pool) -> AsyncIterator[None]:
    breaker = _circuits.get(pool)
    task = asyncio.current_task()
    if breaker is None or _permit_holder.get() is task:
        yield
        return
    try:
        permit = breaker.acquire()
    except CircuitOpenError as exc:
        raise LedgerDownError(
            retry_after=exc.retry_after, details={"circuit": breaker.name}
        ) from exc
    outer = _permit_holder.get()
    _permit_holder.set(task)
    try:
        with permit:
            if permit.is_probe:  # test the server, not a socket that died with the outage
                await pool.check()
            yield
    except LedgerDownError as exc:
        if exc.retry_after is None and breaker.state is State.OPEN:
            exc.retry_after = breaker.retry_after  # this failure opened it
        raise
    finally:
        _permit_holder.set(outer)


def handed_out_since(pool: Pool, since: float) -> bool:
    """Whether ``pool`` handed a connection to anyone after ``since`` (``time.monotonic()``):
    a wait that timed out meanwhile was queueing behind busy work, not a dead server."""
    return _handed_out.get(pool, since) > since


@asynccontextmanager
async def _checkout(pool: Pool) -> AsyncIterator[Conn]:
    """A connection from ``pool``. A wait that times out while the pool kept handing
    connections to others is overload: ``LedgerSaturatedError``, which the circuit ignores.
    One during which nobody got a connection is the pool's ``PoolTimeout``: the server is
    unreachable or hung, and the circuit counts it."""
    started, got = time.monotonic(), False
    try:
        async with pool.connection() as conn:
            got = True
            _handed_out[pool] = time.monotonic()
            yield conn
    except PoolTimeout:
        if got or _handed_out.get(pool, started) <= started:
            raise
        raise LedgerSaturatedError(time.monotonic() - started) from None


@asynccontextmanager
async def transaction(pool: Pool, *, pipeline: bool = False) -> AsyncIterator[Conn]:
    """One connection in one transaction, with database errors translated; observed as the
    ledger's ``transaction`` operation (time to commit or roll back, and which).

    ``pipeline``: in libpq's pipeline mode. Statements whose results nobody reads (BEGIN,
    writes, COMMIT) go out together and the server's answers are read at the next sync: a
    fetch, a savepoint's end, or the commit. An error then surfaces there, not at the
    statement that caused it, and ``rowcount`` is unknown until that sync.
    """
    with metrics.timed("ledger", "transaction", metrics.ledger_status):
        async with _through_circuit(pool):
            with translate_errors():
                async with _checkout(pool) as conn:
                    if pipeline:
                        async with conn.pipeline(), conn.transaction():
                            yield conn
                    else:
                        async with conn.transaction():
                            yield conn


@asynccontextmanager
async def connection(pool: Pool) -> AsyncIterator[Conn]:
    """One autocommit connection, with database errors translated; observed as the ledger's
    ``connection`` operation."""
    with metrics.timed("ledger", "connection", metrics.ledger_status):
        async with _through_circuit(pool):
            with translate_errors():
                async with _checkout(pool) as conn:
                    yield conn


async def sync(conn: Conn) -> None:
    """In pipeline mode, read the server's answers to everything sent so far: an error of any
    of those statements is raised here. Outside pipeline mode, nothing to do."""
    pipeline = conn._pipeline  # psycopg's active pipeline, if any
    if isinstance(pipeline, psycopg.AsyncPipeline):
        await pipeline.sync()


async def fetch_one(conn: Conn, name: str, params: dict[str, Any] | None = None) -> Row | None:
    cur = await conn.execute(queries[name], params or {})
    return await cur.fetchone()


async def fetch_all(conn: Conn, name: str, params: dict[str, Any] | None = None) -> list[Row]:
    cur = await conn.execute(queries[name], params or {})
    return await cur.fetchall()


async def execute(conn: Conn, name: str, params: dict[str, Any] | None = None) -> int:
    cur = await conn.execute(queries[name], params or {})
    return cur.rowcount
