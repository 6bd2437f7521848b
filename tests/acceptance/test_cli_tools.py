"""Operator commands in a subprocess against a real database: keys, audit, migrate, sagas."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from typing import Any

import psycopg

from proveniq_core import db
from proveniq_core.errors import LockerHardwareError
from proveniq_core.saga import SagaDefinition, SagaEngine, Step, StepContext


def proveniq(*args: str, database_url: str, columns: int = 200) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PROVENIQ_DATABASE_URL": database_url, "COLUMNS": str(columns)}
    return subprocess.run(
        [sys.executable, "-m", "proveniq_core", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_keys_create_list_revoke(database_url: str) -> None:
    """keys create prints a pk_ key once; list shows it without the secret; revoke ends it."""
    made = proveniq(
        "keys",
        "create",
        "--tenant",
        "acme",
        "--scopes",
        "assets:read,ops:read",
        database_url=database_url,
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("pk_")
    key_id, secret = token.split("_", 2)[1:]
    listed = proveniq("keys", "list", database_url=database_url)
    assert key_id in listed.stdout
    assert "acme" in listed.stdout
    assert secret not in listed.stdout
    [as_json] = json.loads(proveniq("keys", "list", "--json", database_url=database_url).stdout)
    assert (as_json["id"], as_json["tenantId"], as_json["scopes"], as_json["revokedAt"]) == (
        key_id,
        "acme",
        ["assets:read", "ops:read"],
        None,
    )
    assert secret not in json.dumps(as_json)
    assert proveniq("keys", "revoke", key_id, database_url=database_url).returncode == 0
    again = proveniq("keys", "revoke", key_id, database_url=database_url)
    assert again.returncode == 1
    assert "no active key" in again.stderr


def test_keys_create_refuses_unknown_scopes(database_url: str) -> None:
    """An unknown scope is a usage error naming the known ones; nothing is created."""
    bad = proveniq(
        "keys", "create", "--tenant", "acme", "--scopes", "assets:delete", database_url=database_url
    )
    assert bad.returncode == 2
    assert "unknown scope" in bad.stderr
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM api_keys").fetchone()
    assert row is not None and row[0] == 0


def test_audit_verify_passes_then_names_a_tampered_row(database_url: str) -> None:
    """audit verify exits 0 on an intact chain and 2 naming the row after tampering."""
    for tenant in ("a", "b", "c"):
        proveniq("keys", "create", "--tenant", tenant, database_url=database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO audit_log (actor, action, entity_type, entity_id) "
            "SELECT 'test', 'x', 'thing', g::text FROM generate_series(1, 5) g"
        )
    ok = proveniq("audit", "verify", database_url=database_url)
    assert ok.returncode == 0, ok.stderr
    assert "8 rows verified" in ok.stdout  # 3 key creations + 5 rows
    report = json.loads(proveniq("audit", "verify", "--json", database_url=database_url).stdout)
    assert (report["ok"], report["checked"], report["brokenSeq"]) == (True, 8, None)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_append_only")
        conn.execute("UPDATE audit_log SET entity_id = 'forged' WHERE seq = 3")
        conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_append_only")
    broken = proveniq("audit", "verify", database_url=database_url)
    assert broken.returncode == 2
    assert "seq=3" in broken.stderr
    assert "BROKEN" in broken.stderr
    as_json = proveniq("audit", "verify", "--json", database_url=database_url)
    assert as_json.returncode == 2
    assert (json.loads(as_json.stdout)["ok"], json.loads(as_json.stdout)["brokenSeq"]) == (False, 3)


def test_migrate_is_idempotent(database_url: str) -> None:
    """migrate on a current schema says so and changes nothing."""
    out = proveniq("migrate", database_url=database_url)
    assert out.returncode == 0, out.stderr
    assert "up to date" in out.stdout


async def _run_sagas(pool: db.Pool) -> tuple[str, str, str]:
    """A completed, a compensated and a scheduled (running, not yet due) saga."""

    async def ok(ctx: StepContext) -> dict[str, Any]:
        return {}

    async def undo(ctx: StepContext) -> None:
        return None

    async def jam(ctx: StepContext) -> dict[str, Any]:
        raise LockerHardwareError("door jammed")

    fine = SagaDefinition("cli_fine", (Step("reserve", ok, undo), Step("confirm", ok)))
    jammed = SagaDefinition("cli_jammed", (Step("reserve", ok, undo), Step("jam", jam)))
    engine = SagaEngine(pool)
    completed = await engine.run(fine, {}, tenant_id="acme")
    compensated = await engine.run(jammed, {}, tenant_id="acme")
    scheduled = await engine.schedule(fine, {}, delay=3600)
    assert (completed.status, compensated.status) == ("completed", "compensated")
    return completed.saga_id, compensated.saga_id, scheduled


async def test_sagas_list_shows_status_step_and_error(database_url: str, pool: db.Pool) -> None:
    """sagas list shows each saga's status and error code, filters by status, and --json."""
    completed, compensated, scheduled = await _run_sagas(pool)
    listed = await asyncio.to_thread(proveniq, "sagas", "list", database_url=database_url)
    assert listed.returncode == 0, listed.stderr
    rows = [cells for cells in map(str.split, listed.stdout.splitlines()) if cells]
    by_id = {cells[0]: cells for cells in rows}
    newest_first = [scheduled, compensated, completed]
    assert [cells[0] for cells in rows if cells[0] in newest_first] == newest_first
    assert by_id[scheduled][1:4] == ["cli_fine", "running", "–"]
    assert by_id[compensated][1:4] == ["cli_jammed", "compensated", "reserve"]
    assert by_id[compensated][-1] == "E_LOCKER_HARDWARE"
    assert by_id[completed][1:4] == ["cli_fine", "completed", "confirm"]

    filtered = await asyncio.to_thread(
        proveniq, "sagas", "list", "--status", "compensated", "--json", database_url=database_url
    )
    assert filtered.returncode == 0, filtered.stderr
    [only] = json.loads(filtered.stdout)
    assert (only["sagaId"], only["errorCode"], only["lastStep"]) == (
        compensated,
        "E_LOCKER_HARDWARE",
        "reserve",
    )
    bad = await asyncio.to_thread(
        proveniq, "sagas", "list", "--status", "stuck", database_url=database_url
    )
    assert bad.returncode == 2
    assert "compensation_failed" in bad.stderr


async def test_sagas_show_prints_the_step_timeline(database_url: str, pool: db.Pool) -> None:
    """sagas show prints the header and every attempt, compensation included; --json too."""
    _, compensated, _ = await _run_sagas(pool)
    shown = await asyncio.to_thread(
        proveniq, "sagas", "show", compensated, database_url=database_url
    )
    assert shown.returncode == 0, shown.stderr
    assert "compensated" in shown.stdout
    assert "E_LOCKER_HARDWARE" in shown.stdout and "door jammed" in shown.stdout
    timeline = [
        cells for cells in map(str.split, shown.stdout.splitlines()) if cells[:1] in (["0"], ["1"])
    ]
    assert [(c[1], c[2], c[3], c[4], c[9:]) for c in timeline] == [
        ("reserve", "execute", "1", "completed", []),
        ("jam", "execute", "1", "failed", ["E_LOCKER_HARDWARE"]),
        ("reserve", "compensate", "1", "completed", []),
    ]
    as_json = await asyncio.to_thread(
        proveniq, "sagas", "show", compensated, "--json", database_url=database_url
    )
    view = json.loads(as_json.stdout)
    assert view["status"] == "compensated"
    assert [(s["step"], s["phase"], s["status"], s["errorCode"]) for s in view["steps"]] == [
        ("reserve", "execute", "completed", None),
        ("jam", "execute", "failed", "E_LOCKER_HARDWARE"),
        ("reserve", "compensate", "completed", None),
    ]


async def test_sagas_list_and_show_print_whole_ids_in_80_columns(
    database_url: str, pool: db.Pool
) -> None:
    """COLUMNS=80 sagas list keeps every saga id whole with its status and error code (the
    other columns left out, none cut, no line wider than 80); sagas show fits too."""
    completed, compensated, scheduled = await _run_sagas(pool)
    narrow = await asyncio.to_thread(
        proveniq, "sagas", "list", database_url=database_url, columns=80
    )
    assert narrow.returncode == 0, narrow.stderr
    assert "…" not in narrow.stdout
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 80
    by_id = {cells[0]: cells for cells in map(str.split, narrow.stdout.splitlines()) if cells}
    assert by_id[completed][1:] == ["completed"]
    assert by_id[compensated][1:] == ["compensated", "E_LOCKER_HARDWARE"]
    assert by_id[scheduled][1:] == ["running"]
    assert "left out to fit 80 columns" in narrow.stderr

    shown = await asyncio.to_thread(
        proveniq, "sagas", "show", compensated, database_url=database_url, columns=80
    )
    assert shown.returncode == 0, shown.stderr
    assert "…" not in shown.stdout
    assert max(len(line) for line in shown.stdout.splitlines()) <= 80
    assert f"saga                 {compensated}  cli_jammed" in shown.stdout


def test_sagas_show_unknown_id_exits_1(database_url: str) -> None:
    """An id that names no saga (or is not an id at all) is an error on stderr, exit 1."""
    for saga_id in (str(uuid.uuid4()), "not-a-saga"):
        missing = proveniq("sagas", "show", saga_id, database_url=database_url)
        assert missing.returncode == 1, saga_id
        assert f"no saga '{saga_id}'" in missing.stderr
        assert missing.stdout == ""


def test_serve_refuses_an_unknown_event_loop(database_url: str) -> None:
    """--event-loop is a choice: another value is a usage error naming the choices."""
    out = proveniq("serve", "--event-loop", "trio", database_url=database_url)
    assert out.returncode == 2
    assert "'trio' is not one of 'asyncio', 'uvloop'" in out.stderr
