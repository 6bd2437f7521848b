"""Signed audit checkpoints through the real commands against a real database: an attacker
with the database's superuser truncates or re-chains the log and ``audit verify`` alone still
passes; ``audit verify --checkpoint`` catches it, and a forged checkpoint is refused."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from psycopg.rows import dict_row

from proveniq_core.ledger import checkpoints
from proveniq_core.ledger.audit import GENESIS, chain_hash


def proveniq(
    *args: str, database_url: str, home: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    environ = {
        **os.environ,
        "PROVENIQ_DATABASE_URL": database_url,
        "PROVENIQ_HOME": str(home),
        "COLUMNS": "80",  # messages must stay one line even on a narrow terminal
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "proveniq_core", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def add_rows(database_url: str, n: int, entity: str = "thing") -> None:
    """Activity: ``n`` audit rows, as any state change would write them."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO audit_log (actor, action, entity_type, entity_id) "
            "SELECT 'test', 'x', %s, g::text FROM generate_series(1, %s) g",
            (entity, n),
        )


def as_superuser(database_url: str, *statements: str) -> None:
    """What an attacker with the database's superuser does: lift the append-only guard."""
    with psycopg.connect(database_url) as conn:
        conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
        for sql in statements:
            conn.execute(sql)
        conn.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")


def rechain(database_url: str) -> None:
    """Recompute every seq's prev_hash and hash, as an attacker covering an edit would."""
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
        prev = GENESIS
        for row in conn.execute("SELECT * FROM audit_log ORDER BY seq").fetchall():
            digest = chain_hash(prev, row)
            conn.execute(
                "UPDATE audit_log SET prev_hash = %s, hash = %s WHERE id = %s",
                (prev, digest, row["id"]),
            )
            prev = digest
        conn.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")


def one_line(text: str) -> str:
    assert text.strip() and "\n" not in text.strip(), text
    assert "Traceback" not in text
    return text.strip()


@pytest.fixture
def checkpointed(database_url: str, tmp_path: Path) -> Path:
    """A log of 8 sealed rows and a checkpoint of it; the checkpoint file's path."""
    add_rows(database_url, 8)
    made = proveniq("audit", "checkpoint", database_url=database_url, home=tmp_path)
    assert made.returncode == 0, made.stderr
    path = tmp_path / "audit-checkpoints" / "000000000008.json"
    assert str(path) in made.stdout
    return path


def test_a_checkpoint_then_more_activity_verifies(
    database_url: str, tmp_path: Path, checkpointed: Path
) -> None:
    """After a checkpoint the log grows; verify --checkpoint proves it holds the checkpoint
    and only grew, with the public key beside it or given, and a later checkpoint too."""
    doc = json.loads(checkpointed.read_text())
    assert doc["seq"] == 8 and doc["algorithm"] == "Ed25519"
    key = tmp_path / "audit-signing-key.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    public = checkpointed.parent / f"public-key-{doc['keyId']}.pem"
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")

    add_rows(database_url, 5)
    ok = proveniq(
        "audit", "verify", "--checkpoint", str(checkpointed), database_url=database_url,
        home=tmp_path,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "holds checkpoint seq 8" in ok.stdout
    assert "only grew since: 5 rows after it, 13 rows verified" in ok.stdout

    moved = tmp_path / "elsewhere.json"
    moved.write_text(checkpointed.read_text())  # a copy kept apart, with the key given
    given = proveniq(
        "audit", "verify", "--checkpoint", str(moved), "--public-key", str(public),
        database_url=database_url, home=tmp_path,
    )  # fmt: skip
    assert given.returncode == 0, given.stderr

    later = proveniq("audit", "checkpoint", database_url=database_url, home=tmp_path)
    assert later.returncode == 0, later.stderr
    again = proveniq(
        "audit", "verify", "--checkpoint", str(checkpointed.parent / "000000000013.json"),
        database_url=database_url, home=tmp_path,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "holds checkpoint seq 13" in again.stdout
    assert (
        json.loads((checkpointed.parent / "000000000013.json").read_text())["keyId"]
        == (doc["keyId"])
    )


def test_a_truncated_log_is_caught(database_url: str, tmp_path: Path, checkpointed: Path) -> None:
    """Deleting the log's tail passes the plain chain check but not the checkpoint: seq 8 is
    missing; grown again over the cut, the head hash at seq 8 differs."""
    as_superuser(database_url, "DELETE FROM audit_log WHERE seq > 5")
    plain = proveniq("audit", "verify", database_url=database_url, home=tmp_path)
    assert plain.returncode == 0, plain.stderr  # what the chain alone cannot see
    caught = proveniq(
        "audit", "verify", "--checkpoint", str(checkpointed), database_url=database_url,
        home=tmp_path,
    )  # fmt: skip
    assert caught.returncode == 2
    assert one_line(caught.stderr) == (
        "audit log TRUNCATED: seq 8, covered by the checkpoint, is missing (the log ends at seq 5)"
    )

    add_rows(database_url, 4)  # sealed as seq 6..9 over the deleted ones
    regrown = proveniq(
        "audit", "verify", "--checkpoint", str(checkpointed), database_url=database_url,
        home=tmp_path,
    )  # fmt: skip
    assert regrown.returncode == 2
    assert one_line(regrown.stderr).startswith("audit log REWRITTEN: the hash at seq 8 is ")


def test_a_rewritten_and_rechained_log_is_caught(
    database_url: str, tmp_path: Path, checkpointed: Path
) -> None:
    """A row edited and every hash after it recomputed passes the plain chain check; the
    checkpoint's head hash no longer matches; Core then refuses to sign over the rewrite."""
    add_rows(database_url, 3)
    as_superuser(database_url, "UPDATE audit_log SET entity_id = 'forged' WHERE seq = 2")
    rechain(database_url)
    plain = proveniq("audit", "verify", database_url=database_url, home=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert "11 rows verified" in plain.stdout

    caught = proveniq(
        "audit", "verify", "--checkpoint", str(checkpointed), database_url=database_url,
        home=tmp_path,
    )  # fmt: skip
    assert caught.returncode == 2
    signed = json.loads(checkpointed.read_text())["headHash"]
    message = one_line(caught.stderr)
    assert message.startswith("audit log REWRITTEN: the hash at seq 8 is ")
    assert message.endswith(f"the checkpoint signed {signed[:16]}…")

    refused = proveniq("audit", "checkpoint", database_url=database_url, home=tmp_path)
    assert refused.returncode == 2
    assert one_line(refused.stderr).startswith("error: no checkpoint signed: audit log REWRITTEN")
    assert sorted(p.name for p in checkpointed.parent.glob("*.json")) == [checkpointed.name]
    with psycopg.connect(database_url) as conn:
        alert = conn.execute(
            "SELECT severity FROM ops_alerts WHERE code = 'E_AUDIT_CHAIN_BROKEN' "
            "AND resolved_at IS NULL"
        ).fetchone()
    assert alert == ("critical",)


def _flip_signature(doc: dict[str, Any], _: Path) -> list[str]:
    raw = bytearray(base64.b64decode(doc["signature"]))
    raw[0] ^= 1
    doc["signature"] = base64.b64encode(bytes(raw)).decode()
    return []


def _shorter_claim(doc: dict[str, Any], _: Path) -> list[str]:
    doc["seq"] = 5  # an attacker's checkpoint to cover a truncation, the signature kept
    return []


def _other_key(doc: dict[str, Any], tmp: Path) -> list[str]:
    pem = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp / "other.pem").write_bytes(pem)
    return ["--public-key", str(tmp / "other.pem")]


def _resigned_by_another_key(doc: dict[str, Any], _: Path) -> list[str]:
    """The attacker signs their own checkpoint and names our key as the signer."""
    ours = doc["keyId"]
    forged = checkpoints.sign(Ed25519PrivateKey.generate(), 5, doc["headHash"], datetime.now(UTC))
    doc.update(forged.document(), keyId=ours)
    return []


@pytest.mark.parametrize(
    "tamper",
    [_flip_signature, _shorter_claim, _other_key, _resigned_by_another_key],
    ids=["flipped-bit", "seq-changed", "wrong-public-key", "attacker-key-under-our-id"],
)
def test_a_tampered_checkpoint_is_refused(
    database_url: str,
    tmp_path: Path,
    checkpointed: Path,
    tamper: Callable[[dict[str, Any], Path], list[str]],
) -> None:
    """A checkpoint whose signature does not hold under the key is refused, whatever was
    changed, before the log is even read."""
    doc = json.loads(checkpointed.read_text())
    extra = tamper(doc, tmp_path)
    forged = checkpointed.parent / "forged.json"
    forged.write_text(json.dumps(doc))
    caught = proveniq(
        "audit", "verify", "--checkpoint", str(forged), *extra, database_url=database_url,
        home=tmp_path,
    )  # fmt: skip
    assert caught.returncode == 2
    assert one_line(caught.stderr).startswith(f"error: checkpoint signature INVALID: {forged} ")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no checkpoint file"),
        ("{not json", "is not JSON"),
        ('{"type": "something.else"}', "not a checkpoint: type must be"),
        ("[]", "not a checkpoint: the JSON is not an object"),
    ],
)
def test_an_unreadable_checkpoint_is_a_usage_error(
    database_url: str, tmp_path: Path, content: str | None, expected: str
) -> None:
    """A missing, malformed or foreign file exits 1 with one line saying what is wrong."""
    path = tmp_path / "cp.json"
    if content is not None:
        path.write_text(content)
    out = proveniq(
        "audit", "verify", "--checkpoint", str(path), database_url=database_url, home=tmp_path
    )
    assert out.returncode == 1
    assert expected in one_line(out.stderr)


def test_a_checkpoint_without_its_public_key_is_a_usage_error(
    database_url: str, tmp_path: Path, checkpointed: Path
) -> None:
    """Moved away from its public key and given none, a checkpoint cannot be verified: exit 1."""
    moved = tmp_path / "alone.json"
    moved.write_text(checkpointed.read_text())
    out = proveniq(
        "audit", "verify", "--checkpoint", str(moved), database_url=database_url, home=tmp_path
    )
    assert out.returncode == 1
    assert "cannot read the public key" in one_line(out.stderr)


def test_a_configured_key_file_and_directory_are_used(database_url: str, tmp_path: Path) -> None:
    """PROVENIQ_AUDIT_SIGNING_KEY_FILE must exist (exit 1 naming it, nothing created); given
    one, checkpoints are signed with it into PROVENIQ_AUDIT_CHECKPOINT_DIR."""
    key_file, directory = tmp_path / "secrets" / "audit.pem", tmp_path / "cps"
    env = {
        "PROVENIQ_AUDIT_SIGNING_KEY_FILE": str(key_file),
        "PROVENIQ_AUDIT_CHECKPOINT_DIR": str(directory),
    }
    add_rows(database_url, 2)
    missing = proveniq("audit", "checkpoint", database_url=database_url, home=tmp_path, **env)
    assert missing.returncode == 1
    assert one_line(missing.stderr).startswith(f"error: no audit signing key at {key_file} ")
    assert not key_file.exists() and not directory.exists()

    key = Ed25519PrivateKey.generate()
    key_file.parent.mkdir()
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    made = proveniq("audit", "checkpoint", database_url=database_url, home=tmp_path, **env)
    assert made.returncode == 0, made.stderr
    assert not (tmp_path / "audit-signing-key.pem").exists()
    doc = json.loads((directory / "000000000002.json").read_text())
    assert doc["keyId"] == checkpoints.key_id(key.public_key())
