"""The ledger in PostgreSQL: migrations, the state machine, the append-only hash chain."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from proveniq_core import db
from proveniq_core.errors import LedgerConstraintError
from proveniq_core.ledger import assets, audit
from proveniq_core.ledger.states import STATUSES, TRANSITIONS
from tests.integration.conftest import new_asset


async def test_migrations_apply_fresh_and_rerun_as_noop(pg_admin_url: str) -> None:
    """A new database gets every migration once; running again (concurrently) applies nothing."""
    name = f"proveniq_m_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = make_conninfo(pg_admin_url, dbname=name)
    try:
        results = await asyncio.gather(db.migrate(url), db.migrate(url), db.migrate(url))
        assert sorted(v for r in results for v in r) == [m.version for m in db.migrations()]
        assert await db.migrate(url) == []
        with psycopg.connect(url) as conn:
            tables = {
                r[0]
                for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            }
        assert {
            "tenants",
            "api_keys",
            "lockers",
            "assets",
            "audit_log",
            "sagas",
            "saga_steps",
            "verifications",
            "evidence",
            "schema_migrations",
        } <= tables
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def test_database_transition_table_matches_the_code(pool: db.Pool) -> None:
    """The transitions PostgreSQL enforces are exactly ledger.states.TRANSITIONS."""
    async with db.connection(pool) as conn:
        rows = await (
            await conn.execute(
                "SELECT from_status::text AS f, to_status::text AS t FROM asset_transitions"
            )
        ).fetchall()
    assert {(r["f"], r["t"]) for r in rows} == TRANSITIONS


@pytest.mark.parametrize("target", STATUSES)
async def test_database_refuses_illegal_transitions_from_pending(
    pool: db.Pool, target: str
) -> None:
    """From pending, PostgreSQL accepts only the legal moves and refuses the rest."""
    asset_id = await new_asset(pool)
    legal = ("pending", target) in TRANSITIONS or target == "pending"
    if legal:
        async with db.transaction(pool) as conn:
            row = await assets.transition(conn, asset_id, target, actor="test")
        assert row["status"] == target
    else:
        with pytest.raises(LedgerConstraintError):
            async with db.transaction(pool) as conn:
                await assets.transition(conn, asset_id, target, actor="test")
        async with db.connection(pool) as conn:
            found = await db.fetch_one(conn, "get_asset_for_update", {"id": asset_id})
        assert found is not None and found["status"] == "pending"


async def test_terminal_states_are_final(pool: db.Pool) -> None:
    """A compensated asset can never move again, and its version stops growing."""
    asset_id = await new_asset(pool)
    async with db.transaction(pool) as conn:
        await assets.transition(conn, asset_id, "compensated", actor="test")
    for target in ("pending", "linked", "verified"):
        with pytest.raises(LedgerConstraintError):
            async with db.transaction(pool) as conn:
                await assets.transition(conn, asset_id, target, actor="test")


async def test_audit_rows_cannot_be_updated_or_deleted(pool: db.Pool) -> None:
    """The database refuses UPDATE, DELETE and TRUNCATE on audit_log, sealed or not."""
    await new_asset(pool)
    for sql in (
        "UPDATE audit_log SET actor = 'mallory'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            async with pool.connection() as conn:
                await conn.execute(sql)
    await audit.seal(pool)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        async with pool.connection() as conn:
            await conn.execute("UPDATE audit_log SET hash = 'x', seq = seq + 100")


async def test_audit_verify_names_the_first_tampered_row(pool: db.Pool) -> None:
    """With the guard trigger disabled by a superuser, a changed row is caught by verify."""
    for _ in range(3):
        await new_asset(pool)
    assert await audit.seal(pool) == 6  # locker registered + asset created, three times
    report = await audit.verify(pool)
    assert report.ok and report.checked == 6
    async with pool.connection() as conn:
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_append_only")
        await conn.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 4")
        await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_append_only")
        victim = await (await conn.execute("SELECT id FROM audit_log WHERE seq = 4")).fetchone()
    report = await audit.verify(pool)
    assert not report.ok
    assert report.broken_seq == 4
    assert victim is not None and report.broken_id == victim["id"]
    assert report.checked == 3


async def test_audit_rows_commit_with_their_change_or_not_at_all(pool: db.Pool) -> None:
    """A rolled-back transition leaves no audit row behind."""
    asset_id = await new_asset(pool)
    with pytest.raises(RuntimeError):
        async with db.transaction(pool) as conn:
            await assets.transition(conn, asset_id, "linked", actor="test", locker_id="LKR-1")
            raise RuntimeError("crash before commit")
    async with db.connection(pool) as conn:
        rows = await db.fetch_all(
            conn, "audit_for_entity", {"entity_type": "asset", "entity_id": asset_id}
        )
    assert [r["action"] for r in rows] == ["asset.created"]
