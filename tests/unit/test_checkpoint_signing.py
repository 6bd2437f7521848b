"""Audit checkpoint documents, their Ed25519 signatures and the signing key's file."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proveniq_core.config import Settings
from proveniq_core.ledger import checkpoints
from proveniq_core.ledger.checkpoints import Checkpoint, CheckpointError

HEAD = "ab" * 32
AT = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def test_a_signed_checkpoint_verifies_and_reads_back() -> None:
    """sign → document → parse gives a checkpoint that verifies under the signer's key only."""
    key = Ed25519PrivateKey.generate()
    made = checkpoints.sign(key, 42, HEAD, AT)
    assert made.signed_at == "2026-01-02T03:04:05.678Z"
    assert made.key_id == checkpoints.key_id(key.public_key())
    again = Checkpoint.parse(json.loads(json.dumps(made.document())))
    assert again == made and again.verifies(key.public_key())
    assert not again.verifies(Ed25519PrivateKey.generate().public_key())


@pytest.mark.parametrize(
    ("field", "value"),
    [("seq", 41), ("headHash", "cd" * 32), ("signedAt", "2027-01-01T00:00:00.000Z")],
)
def test_changing_any_signed_field_breaks_the_signature(field: str, value: Any) -> None:
    """The signature covers the length, the head hash and the time."""
    key = Ed25519PrivateKey.generate()
    doc = checkpoints.sign(key, 42, HEAD, AT).document()
    doc[field] = value
    assert not Checkpoint.parse(doc).verifies(key.public_key())


def test_a_garbled_signature_does_not_verify() -> None:
    """A signature that is not base64, or of the wrong length, is simply invalid."""
    key = Ed25519PrivateKey.generate()
    doc = checkpoints.sign(key, 1, HEAD, AT).document()
    for garbled in ("!!!not base64!!!", "AAAA"):
        assert not Checkpoint.parse({**doc, "signature": garbled}).verifies(key.public_key())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 2}, "type must be proveniq.audit.checkpoint version 1"),
        ({"algorithm": "RSA"}, "algorithm must be Ed25519"),
        ({"seq": 0}, "seq must be a positive integer"),
        ({"seq": "7"}, "seq must be a positive integer"),
        ({"seq": True}, "seq must be a positive integer"),
        ({"headHash": "AB" * 32}, "headHash must be 64 hex digits"),
        ({"signature": ""}, "signedAt, keyId and signature are required"),
        ({"keyId": None}, "signedAt, keyId and signature are required"),
    ],
)
def test_a_malformed_document_is_named(change: dict[str, Any], message: str) -> None:
    """Each malformed field is refused with what is wrong with it."""
    doc = checkpoints.sign(Ed25519PrivateKey.generate(), 1, HEAD, AT).document()
    with pytest.raises(CheckpointError, match=message):
        Checkpoint.parse({**doc, **change})


def test_the_default_key_is_created_once_private_and_reused(tmp_path: Path) -> None:
    """Under the home the key file is created with mode 0600, once, even when several
    processes start together, and later loads return the same key."""
    settings = Settings(home=tmp_path)
    with ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(lambda _: checkpoints.signing_key(settings), range(8)))
    ids = {checkpoints.key_id(k.public_key()) for k in keys}
    assert len(ids) == 1
    path = tmp_path / "audit-signing-key.pem"
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left
    assert checkpoints.key_id(checkpoints.signing_key(settings).public_key()) in ids


def test_a_configured_key_file_must_exist_and_be_ed25519(tmp_path: Path) -> None:
    """A configured key is never invented; a file that is not an Ed25519 key is named."""
    path = tmp_path / "key.pem"
    settings = Settings(home=tmp_path, audit_signing_key_file=path)
    with pytest.raises(CheckpointError, match=f"no audit signing key at {path}"):
        checkpoints.signing_key(settings)
    assert not path.exists()
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="is not an unencrypted PEM private key"):
        checkpoints.signing_key(settings)
    other = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(CheckpointError, match="not an Ed25519 key"):
        checkpoints.signing_key(settings)
    pem = other.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "pub.pem").write_bytes(pem)
    with pytest.raises(CheckpointError, match="not an Ed25519 key"):
        checkpoints.read_public_key(tmp_path / "pub.pem")


def test_files_are_named_by_seq_with_the_public_key_beside(tmp_path: Path) -> None:
    """write() puts the checkpoint in <seq>.json and the key in public-key-<keyId>.pem."""
    key = Ed25519PrivateKey.generate()
    made = checkpoints.sign(key, 7, HEAD, AT)
    path = checkpoints.write(tmp_path / "cps", made, key.public_key())
    assert path == tmp_path / "cps" / "000000000007.json"
    assert checkpoints.read(path) == made
    public = checkpoints.read_public_key(tmp_path / "cps" / f"public-key-{made.key_id}.pem")
    assert made.verifies(public)


def test_a_head_hash_with_a_trailing_newline_is_malformed() -> None:
    """The head hash is exactly 64 lowercase hex digits, nothing after them."""
    doc = checkpoints.sign(Ed25519PrivateKey.generate(), 1, HEAD, AT).document()
    with pytest.raises(CheckpointError, match="headHash must be 64 hex digits"):
        Checkpoint.parse({**doc, "headHash": HEAD + "\n"})
