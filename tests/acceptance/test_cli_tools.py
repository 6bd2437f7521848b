"""Operator commands in a subprocess against a real database: keys, audit verify, migrate."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg


def proveniq(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PROVENIQ_DATABASE_URL": database_url, "COLUMNS": "200"}
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
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_append_only")
        conn.execute("UPDATE audit_log SET entity_id = 'forged' WHERE seq = 3")
        conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_append_only")
    broken = proveniq("audit", "verify", database_url=database_url)
    assert broken.returncode == 2
    assert "seq=3" in broken.stderr
    assert "BROKEN" in broken.stderr


def test_migrate_is_idempotent(database_url: str) -> None:
    """migrate on a current schema says so and changes nothing."""
    out = proveniq("migrate", database_url=database_url)
    assert out.returncode == 0, out.stderr
    assert "up to date" in out.stdout
