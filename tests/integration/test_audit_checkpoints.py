"""Taking signed audit checkpoints against a real database: one per interval among several
workers, the webhook copy, a failed write rolling back, and the worker that runs them."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import psycopg
import pytest

from proveniq_core import db
from proveniq_core.config import Settings
from proveniq_core.ledger import audit, checkpoints, keys
from proveniq_core.webhooks import endpoints
from tests.integration.conftest import core_running


def settings_for(home: Path, database_url: str, interval: float = 3600.0) -> Settings:
    return Settings(home=home, database_url=database_url, audit_checkpoint_interval=interval)


async def add_rows(pool: db.Pool, n: int) -> None:
    async with db.connection(pool) as conn:
        await conn.execute(
            "INSERT INTO audit_log (actor, action, entity_type, entity_id) "
            "SELECT 'test', 'x', 'thing', g::text FROM generate_series(1, %s) g",
            (n,),
        )


def as_superuser(database_url: str, *statements: str) -> None:
    """What an attacker with the database's superuser does: lift the append-only guard."""
    with psycopg.connect(database_url) as conn:
        conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
        for sql in statements:
            conn.execute(sql)
        conn.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")


async def checkpoint_rows(pool: db.Pool) -> list[int]:
    async with db.connection(pool) as conn:
        cur = await conn.execute("SELECT seq FROM audit_checkpoints ORDER BY id")
        return [r["seq"] for r in await cur.fetchall()]


async def test_several_workers_write_one_checkpoint_per_interval(
    pool: db.Pool, database_url: str, tmp_path: Path
) -> None:
    """Four workers (each its own pool) due at once write one checkpoint between them; inside
    the interval they write none; once it passed, one again, but only if the log grew."""
    await add_rows(pool, 3)
    settings = settings_for(tmp_path, database_url)
    pools = [await db.open_pool(database_url, min_size=1, max_size=3) for _ in range(4)]
    try:
        outcomes = await asyncio.gather(*(checkpoints.take(p, settings) for p in pools))
    finally:
        await asyncio.gather(*(p.close() for p in pools))
    written = [o for o in outcomes if o.checkpoint is not None]
    assert len(written) == 1
    assert {o.reason for o in outcomes if o.checkpoint is None} <= {
        "another process is writing a checkpoint",
        "the last checkpoint (seq 3) is recent",
    }
    assert await checkpoint_rows(pool) == [3]
    assert [p.name for p in settings.checkpoint_dir.glob("*.json")] == ["000000000003.json"]

    await add_rows(pool, 2)
    inside = await checkpoints.take(pool, settings)
    assert inside.checkpoint is None and inside.reason == "the last checkpoint (seq 3) is recent"

    async with db.connection(pool) as conn:  # the interval passes
        await conn.execute("UPDATE audit_checkpoints SET signed_at = signed_at - interval '2h'")
    grown = await checkpoints.take(pool, settings)
    assert grown.checkpoint is not None and grown.checkpoint.seq == 5
    async with db.connection(pool) as conn:
        await conn.execute("UPDATE audit_checkpoints SET signed_at = signed_at - interval '2h'")
    idle = await checkpoints.take(pool, settings)
    assert idle.checkpoint is None
    assert idle.reason == "no new audit rows since the checkpoint at seq 5"
    assert await checkpoint_rows(pool) == [3, 5]


async def test_the_checkpoint_is_emitted_to_the_operator_tenant(
    pool: db.Pool, database_url: str, tmp_path: Path
) -> None:
    """The audit.checkpoint event carries the document the file holds, to the operator's
    tenant only: another tenant subscribed to it gets nothing (it counts every tenant's rows)."""
    async with db.transaction(pool) as conn:
        for tenant in ("default", "acme"):
            await keys.ensure_tenant(conn, tenant)
            await endpoints.create(
                conn,
                tenant_id=tenant,
                url="https://receiver.example/hooks",
                events=["audit.checkpoint"],
                secret="fernet:not-delivered-in-this-test",
                actor="test",
            )
    outcome = await checkpoints.take(pool, settings_for(tmp_path, database_url), force=True)
    assert outcome.checkpoint is not None and outcome.path is not None
    async with db.connection(pool) as conn:
        cur = await conn.execute("SELECT tenant_id, type, data FROM webhook_events")
        events = await cur.fetchall()
    assert events == [
        {
            "tenant_id": "default",
            "type": "audit.checkpoint",
            "data": json.loads(outcome.path.read_text()),
        }
    ]


async def test_a_failed_write_leaves_no_checkpoint(
    pool: db.Pool, database_url: str, tmp_path: Path
) -> None:
    """When the directory cannot be written the checkpoint fails in one line and neither its
    row nor its event is committed."""
    await add_rows(pool, 2)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    settings = Settings(
        home=tmp_path, database_url=database_url, audit_checkpoint_dir=blocker / "cps"
    )
    with pytest.raises(checkpoints.CheckpointError, match="cannot write a checkpoint in"):
        await checkpoints.take(pool, settings, force=True)
    assert await checkpoint_rows(pool) == []


async def test_a_broken_chain_is_never_signed(
    pool: db.Pool, database_url: str, tmp_path: Path
) -> None:
    """With no checkpoint yet the whole chain is verified first: an edited row stops the
    checkpoint with a critical alert, and nothing is signed."""
    await add_rows(pool, 4)
    await audit.seal(pool)
    as_superuser(database_url, "UPDATE audit_log SET entity_id = 'forged' WHERE seq = 2")
    with pytest.raises(checkpoints.ChainBrokenError, match="audit chain BROKEN at row id=2"):
        await checkpoints.take(pool, settings_for(tmp_path, database_url))
    assert await checkpoint_rows(pool) == []
    assert not list((tmp_path / "audit-checkpoints").glob("*.json"))
    async with db.connection(pool) as conn:
        cur = await conn.execute("SELECT code, severity FROM ops_alerts")
        assert await cur.fetchall() == [{"code": "E_AUDIT_CHAIN_BROKEN", "severity": "critical"}]


async def test_a_worker_takes_checkpoints_every_interval(
    database_url: str, mqtt_url: str, tmp_path: Path
) -> None:
    """A running worker signs checkpoints under its home every interval as the log grows."""
    directory = tmp_path / "audit-checkpoints"

    async def written(n: int) -> list[Path]:
        deadline = time.monotonic() + 20
        while len(found := sorted(directory.glob("*.json"))) < n:
            assert time.monotonic() < deadline, f"{len(found)} checkpoints written, not {n}"
            await asyncio.sleep(0.1)
        return found

    async with core_running(database_url, mqtt_url, tmp_path, audit_checkpoint_interval=0.5) as c:
        first = checkpoints.read((await written(1))[0])
        await add_rows(c.pool, 3)
        second = checkpoints.read((await written(2))[1])
        assert second.seq == first.seq + 3
        public = checkpoints.read_public_key(checkpoints.public_key_path(directory, first.key_id))
        for found in (first, second):
            assert found.verifies(public)
            verdict = await checkpoints.check(c.pool, found)
            assert verdict.ok, verdict.message


async def test_a_truncation_after_a_checkpoint_is_never_signed(
    pool: db.Pool, database_url: str, tmp_path: Path
) -> None:
    """The next checkpoint refuses a log cut below the last one, naming the missing seq."""
    settings = settings_for(tmp_path, database_url)
    await add_rows(pool, 6)
    assert (await checkpoints.take(pool, settings)).checkpoint is not None
    as_superuser(database_url, "DELETE FROM audit_log WHERE seq > 4")
    with pytest.raises(checkpoints.ChainBrokenError) as caught:
        await checkpoints.take(pool, settings, force=True)
    assert str(caught.value) == (
        "no checkpoint signed: audit log TRUNCATED: seq 6, covered by the checkpoint, is "
        "missing (the log ends at seq 4)"
    )


@pytest.mark.parametrize("survivor", ["directory", "database"])
async def test_either_copy_of_the_last_checkpoint_stops_a_rechained_log(
    pool: db.Pool, database_url: str, tmp_path: Path, survivor: str
) -> None:
    """Whether the attacker deletes the checkpoint rows or the files are elsewhere, the copy
    left (its signature checked) still stops Core from signing over a re-chained log."""
    settings = settings_for(tmp_path, database_url)
    await add_rows(pool, 5)
    assert (await checkpoints.take(pool, settings)).checkpoint is not None
    if survivor == "directory":
        async with db.connection(pool) as conn:
            await conn.execute("DELETE FROM audit_checkpoints")
    else:
        for path in settings.checkpoint_dir.iterdir():
            path.unlink()
    as_superuser(database_url, "UPDATE audit_log SET entity_id = 'forged' WHERE seq = 1")
    async with db.connection(pool) as conn:  # re-chain every hash after the edit
        cur = await conn.execute("SELECT * FROM audit_log ORDER BY seq")
        rows = await cur.fetchall()
    prev, fixes = audit.GENESIS, []
    for row in rows:
        fixes.append((prev, audit.chain_hash(prev, row), row["id"]))
        prev = fixes[-1][1]
    as_superuser(
        database_url,
        *(
            f"UPDATE audit_log SET prev_hash = '{p}', hash = '{h}' WHERE id = {i}"
            for p, h, i in fixes
        ),
    )
    assert (await audit.verify(pool)).ok
    with pytest.raises(
        checkpoints.ChainBrokenError, match="audit log REWRITTEN: the hash at seq 5"
    ):
        await checkpoints.take(pool, settings, force=True)
