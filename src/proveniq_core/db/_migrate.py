"""Migrations: the numbered files in ``sql/migrations``, applied in order under an advisory
lock, so several processes may run ``migrate`` at once."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import psycopg
import structlog
from psycopg import errors as pg_errors

from proveniq_core.db._pool import Conn

log = structlog.get_logger("proveniq_core.db")

MIGRATION_LOCK = 0x50524F56  # "PROV": advisory lock key for migrations


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
