"""PostgreSQL access: the pool, named queries, migrations, and error translation.

Named queries live in ``sql/queries.sql`` under ``-- name --`` headers and are loaded once.
Migrations are the numbered files in ``sql/migrations``, applied in order under an advisory
lock, so several processes may run ``migrate`` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, LiteralString

import psycopg
import structlog
from psycopg import errors as pg_errors
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from proveniq_core.errors import (
    LedgerConflictError,
    LedgerConstraintError,
    LedgerDownError,
)

log = structlog.get_logger(__name__)

MIGRATION_LOCK = 0x50524F56  # "PROV": advisory lock key for migrations

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


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    folder = resources.files("proveniq_core.sql").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        m = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if m:
            found.append(Migration(int(m[1]), m[2], entry.read_text("utf-8")))
    return sorted(found, key=lambda m: m.version)


async def migrate(conninfo: str) -> list[int]:
    """Apply pending migrations; return the versions applied by this call."""
    applied: list[int] = []
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur = await conn.execute("SELECT version FROM schema_migrations")
            done = {r[0] for r in await cur.fetchall()}
            for mig in migrations():
                if mig.version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(mig.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (mig.version, mig.name),
                    )
                applied.append(mig.version)
                log.info("migration_applied", version=mig.version, name=mig.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return applied


async def pending_migrations(conn: Conn) -> list[int]:
    try:
        cur = await conn.execute("SELECT version FROM schema_migrations")
        done = {r["version"] for r in await cur.fetchall()}
    except pg_errors.UndefinedTable:
        done = set()
    return [m.version for m in migrations() if m.version not in done]


async def open_pool(conninfo: str, *, min_size: int = 2, max_size: int = 20) -> Pool:
    pool: Pool = AsyncConnectionPool(
        conninfo,
        min_size=min_size,
        max_size=max_size,
        kwargs={"row_factory": dict_row, "autocommit": True},
        open=False,
        timeout=5.0,
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


@asynccontextmanager
async def transaction(pool: Pool) -> AsyncIterator[Conn]:
    """One connection in one transaction, with database errors translated."""
    with translate_errors():
        async with pool.connection() as conn, conn.transaction():
            yield conn


@asynccontextmanager
async def connection(pool: Pool) -> AsyncIterator[Conn]:
    """One autocommit connection, with database errors translated."""
    with translate_errors():
        async with pool.connection() as conn:
            yield conn


async def fetch_one(conn: Conn, name: str, params: dict[str, Any] | None = None) -> Row | None:
    cur = await conn.execute(queries[name], params or {})
    return await cur.fetchone()


async def fetch_all(conn: Conn, name: str, params: dict[str, Any] | None = None) -> list[Row]:
    cur = await conn.execute(queries[name], params or {})
    return await cur.fetchall()


async def execute(conn: Conn, name: str, params: dict[str, Any] | None = None) -> int:
    cur = await conn.execute(queries[name], params or {})
    return cur.rowcount


class Waker:
    """Wakes workers on ``NOTIFY`` of ``channel``; the payload names the topic (a table).

    Each topic has its own event, so several workers can share one listening connection.
    Workers wait with a timeout, so polling covers any missed notification.
    """

    def __init__(self, conninfo: str, channel: str = "proveniq_work") -> None:
        self.conninfo = conninfo
        self.channel = channel
        self._events: dict[str, asyncio.Event] = {}

    def _event(self, topic: str) -> asyncio.Event:
        return self._events.setdefault(topic, asyncio.Event())

    async def run(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.conninfo, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {self.channel}")
                    for event in self._events.values():  # catch up on anything missed
                        event.set()
                    async for note in conn.notifies():
                        self._event(note.payload).set()
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                log.warning("listen_reconnect", channel=self.channel, error=str(exc))
                await asyncio.sleep(1.0)

    async def wait(self, topic: str, timeout: float) -> None:
        event = self._event(topic)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        event.clear()
