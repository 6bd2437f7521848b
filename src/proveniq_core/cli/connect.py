"""Where a command connects: the running service's HTTP API, or the database.

One rule for every command (``proveniq --help`` prints ``RULE``): a command that acts
through the service's live connections (lockers, circuit breakers, the retry queue) calls
its HTTP API; a command that reads or changes only stored records opens the database, so it
works while no service runs. Only ``serve`` and ``migrate`` may create a database.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from proveniq_core.cli.options import api_key, default_url, home_dir
from proveniq_core.cli.render import CliError, progress

if TYPE_CHECKING:
    from proveniq_core import db

T = TypeVar("T")

RULE = """\b
Where commands connect (one rule for all):
- dlq, assets, lockers, circuits and demo act through the running service's
  HTTP API: --url (PROVENIQ_URL; unset: http://PROVENIQ_HOST:PROVENIQ_PORT,
  where 'proveniq serve' listens with the same variables), with --api-key
  (PROVENIQ_API_KEY; unset: the bootstrap admin key serve keeps under --home).
- keys, audit and sagas read and change stored records: they open the
  database itself, --database-url (PROVENIQ_DATABASE_URL; unset: the embedded
  PostgreSQL under --home, PROVENIQ_HOME), so they work while no service runs.
  They never create a database.
- serve and migrate open the same database, and only they create it (and its
  schema). simulate connects to the MQTT broker only."""

SERVICE = "Through the running service's HTTP API (--url, --api-key; see 'proveniq --help')."
DATABASE = "Opens the database (--database-url or --home; see 'proveniq --help')."

SERVICE_TIMEOUT = 60.0
"""Seconds a call may take: a retry waits for the locker, up to its command timeout."""


def run(coro: Coroutine[Any, Any, T], *, loop: str = "asyncio") -> T:
    """Run a command's coroutine; Ctrl-C exits 130 without a traceback."""
    try:
        if loop == "uvloop":
            import uvloop

            return uvloop.run(coro)
        return asyncio.run(coro)
    except KeyboardInterrupt:
        raise CliError("interrupted", code=130) from None


# -- the service ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Service:
    """The running service's HTTP API, with the key to call it."""

    url: str
    key: str

    def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        waiting: str | None = None,
    ) -> Any:
        """One request; its JSON answer, or a ``CliError`` with the error's code and message.

        A spinner names what the call waits for once it takes longer than a second."""
        try:
            with progress(waiting or f"waiting for {self.url}"):
                response = httpx.request(
                    method,
                    self.url.rstrip("/") + path,
                    params={k: v for k, v in (params or {}).items() if v is not None},
                    json=body,
                    headers={"Authorization": f"Bearer {self.key}"},
                    timeout=SERVICE_TIMEOUT,
                )
        except httpx.HTTPError as exc:
            raise CliError(
                f"cannot reach the service at {self.url}: {exc or type(exc).__name__}"
                " (is 'proveniq serve' running? --url / PROVENIQ_URL names another)"
            ) from None
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                reason = f"{error['code']}: {error['message']}"
            except (ValueError, KeyError, TypeError):
                reason = response.text[:200] or response.reason_phrase
            raise CliError(f"error {response.status_code} {reason}")
        return response.json()


def service(url: str | None, key: str | None, home: Path | None) -> Service:
    """The service named by ``--url`` (else ``default_url()``), called with ``--api-key``
    (else the bootstrap key under ``--home``)."""
    return Service(url or default_url(), api_key(key, home))


# -- the database ---------------------------------------------------------------------------


def where(conninfo: str) -> str:
    """A conninfo for messages: host, port and database, never a password."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(conninfo)
    except Exception:  # an unparsable conninfo still gets a message, without its text
        return "the database named by --database-url"
    host = parts.get("host") or "localhost"
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"{host}{port}/{parts.get('dbname') or parts.get('user') or ''}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.asynccontextmanager
async def database(home: Path | None, database_url: str | None) -> AsyncIterator[db.Pool]:
    """A pool on the service's database, as it is: never created, never migrated.

    ``--database-url``, else the embedded PostgreSQL under ``--home`` (started for the
    command if no service runs it, and stopped after). A missing database, one without the
    schema, or one behind this version fails with one line saying where it looked.
    """
    import psycopg
    from psycopg.rows import dict_row

    from proveniq_core import db, logs
    from proveniq_core.embedded import EmbeddedError, EmbeddedPostgres, NoDatabase

    logs.configure("warning")  # a command prints its result, not the library's progress
    pg = None
    conninfo = database_url
    if conninfo is None:
        home = home_dir(home)
        pg = EmbeddedPostgres(home)
        try:
            with progress(f"starting the embedded PostgreSQL in {pg.pgdata}"):
                conninfo = await asyncio.to_thread(pg.start, create=False)
        except NoDatabase as exc:
            raise CliError(
                f"no database: {exc} (looked under --home / PROVENIQ_HOME = {home}). "
                "'proveniq serve' or 'proveniq migrate' creates it there; "
                "--database-url / PROVENIQ_DATABASE_URL names another"
            ) from None
        except EmbeddedError as exc:
            raise CliError(str(exc)) from None
        place = f"the embedded PostgreSQL in {pg.pgdata}"
    else:
        place = where(conninfo)
    try:
        try:
            async with await psycopg.AsyncConnection.connect(
                conninfo, autocommit=True, row_factory=dict_row, connect_timeout=10
            ) as conn:
                pending = await db.pending_migrations(conn)
        except psycopg.Error as exc:
            raise CliError(f"cannot connect to {place}: {_first_line(exc)}") from None
        if pending and len(pending) == len(db.migrations()):
            raise CliError(
                f"no Proveniq schema in {place}: 'proveniq migrate' creates it "
                "(or --database-url / --home names the service's database)"
            )
        if pending:
            raise CliError(
                f"the schema in {place} is behind this version (migrations "
                f"{', '.join(map(str, pending))} not applied): run 'proveniq migrate'"
            )
        pool = await db.open_pool(conninfo, min_size=1, max_size=2)
        try:
            await pool.wait(timeout=10)
            yield pool
        finally:
            await pool.close()
    finally:
        if pg is not None:
            pg.stop()


def with_database(
    home: Path | None, database_url: str | None, work: Callable[[db.Pool], Awaitable[T]]
) -> T:
    """Run ``work(pool)`` on the database (see ``database``) and return its result."""

    async def go() -> T:
        async with database(home, database_url) as pool:
            return await work(pool)

    return run(go())
