"""Signed audit checkpoints: the sealed chain's length and head hash, signed outside the database.

The hash chain (``ledger.audit``) shows that no sealed row was edited in place, but whoever can
write to the database can also delete the log's tail, or rewrite rows and compute every hash
again, and the chain still verifies. A checkpoint closes that gap: Core signs the chain's last
seq and head hash, with a timestamp and the key's id, using an Ed25519 key kept outside the
database, and writes the signed document outside it too:

- a JSON file per checkpoint in ``PROVENIQ_AUDIT_CHECKPOINT_DIR`` (default
  ``<home>/audit-checkpoints``), named by its seq, with the public key beside it as
  ``public-key-<keyId>.pem``;
- an ``audit.checkpoint`` webhook event to the operator's tenant, so a third party can keep a
  copy the database's owner cannot reach.

A worker takes one every ``PROVENIQ_AUDIT_CHECKPOINT_INTERVAL`` seconds (one worker per
interval between them: an advisory lock and the last checkpoint's time), ``proveniq audit
checkpoint`` on demand. Before signing, Core checks that the chain still extends the last
checkpoint it trusts (its signature holds), so it never signs over a rewrite: it raises a
critical ``E_AUDIT_CHAIN_BROKEN`` alert instead.

``check`` is what ``proveniq audit verify --checkpoint FILE`` runs: the log still holds exactly
what the checkpoint covered (the chain recomputed up to its seq ends on its head hash) and only
grew since (the rows after it link to that head and verify).

The document (``version`` 1); the signature covers the canonical JSON (sorted keys, no spaces)
of every other field::

    {"type": "proveniq.audit.checkpoint", "version": 1, "seq": 1234,
     "headHash": "<64 hex>", "signedAt": "2026-01-02T03:04:05.678Z",
     "keyId": "<16 hex>", "algorithm": "Ed25519", "signature": "<base64>"}
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import structlog
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from proveniq_core import db
from proveniq_core.config import Settings
from proveniq_core.errors import CoreError
from proveniq_core.ledger import alerts, audit, outbox

log = structlog.get_logger(__name__)

DOC_TYPE: Final = "proveniq.audit.checkpoint"
VERSION: Final = 1
ALGORITHM: Final = "Ed25519"
CHECKPOINT_LOCK: Final = 0x41434B50  # "ACKP": one checkpoint writer at a time
OPERATOR_TENANT: Final = "default"
"""The bootstrap key's tenant: the event reports on every tenant's audit rows (their count),
so it goes to the operator, not to each tenant."""
EVENT: Final = "audit.checkpoint"
ALERT_CODE: Final = "E_AUDIT_CHAIN_BROKEN"

_NAME = re.compile(r"(\d{12,})\.json")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class CheckpointError(Exception):
    """A checkpoint could not be taken or read; the message is one line for an operator."""


class ChainBrokenError(CheckpointError):
    """No checkpoint was signed: the chain no longer extends the last one."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed claim: the sealed chain ended at ``seq`` with ``head_hash`` at ``signed_at``."""

    seq: int
    head_hash: str
    signed_at: str
    key_id: str
    signature: str

    def unsigned(self) -> dict[str, Any]:
        return {
            "type": DOC_TYPE,
            "version": VERSION,
            "seq": self.seq,
            "headHash": self.head_hash,
            "signedAt": self.signed_at,
            "keyId": self.key_id,
            "algorithm": ALGORITHM,
        }

    def document(self) -> dict[str, Any]:
        """The checkpoint as its file and its webhook event carry it."""
        return {**self.unsigned(), "signature": self.signature}

    def signed_bytes(self) -> bytes:
        return _canonical(self.unsigned())

    def verifies(self, public: Ed25519PublicKey) -> bool:
        """The signature holds under ``public`` (and ``public`` is the key it names)."""
        if key_id(public) != self.key_id:
            return False
        try:
            public.verify(base64.b64decode(self.signature, validate=True), self.signed_bytes())
        except (InvalidSignature, binascii.Error, ValueError):
            return False
        return True

    @classmethod
    def parse(cls, doc: Any) -> Checkpoint:
        """The checkpoint in a parsed document; ``CheckpointError`` naming what is wrong."""
        if not isinstance(doc, dict):
            raise CheckpointError("not a checkpoint: the JSON is not an object")
        if doc.get("type") != DOC_TYPE or doc.get("version") != VERSION:
            raise CheckpointError(f"not a checkpoint: type must be {DOC_TYPE} version {VERSION}")
        if doc.get("algorithm") != ALGORITHM:
            raise CheckpointError(f"not a checkpoint: algorithm must be {ALGORITHM}")
        seq, head = doc.get("seq"), doc.get("headHash")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise CheckpointError("not a checkpoint: seq must be a positive integer")
        if not isinstance(head, str) or not _HEX64.fullmatch(head):
            raise CheckpointError("not a checkpoint: headHash must be 64 hex digits")
        fields = [doc.get(k) for k in ("signedAt", "keyId", "signature")]
        if not all(isinstance(f, str) and f for f in fields):
            raise CheckpointError("not a checkpoint: signedAt, keyId and signature are required")
        signed_at, kid, signature = (str(f) for f in fields)
        return cls(seq, head, signed_at, kid, signature)


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def key_id(public: Ed25519PublicKey) -> str:
    """A short, stable name for a public key: the first 16 hex digits of its SHA-256."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(key: Ed25519PrivateKey, seq: int, head_hash: str, signed_at: datetime) -> Checkpoint:
    """Sign the chain's length ``seq`` and head ``head_hash`` as of ``signed_at``."""
    at = signed_at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    draft = Checkpoint(seq, head_hash, at, key_id(key.public_key()), "")
    signature = base64.b64encode(key.sign(draft.signed_bytes())).decode()
    return Checkpoint(seq, head_hash, at, draft.key_id, signature)


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --- keys and files ------------------------------------------------------------------------


def signing_key(settings: Settings) -> Ed25519PrivateKey:
    """The signing key: ``PROVENIQ_AUDIT_SIGNING_KEY_FILE``, which must exist, or the default
    file under the home, created (mode 0600) the first time."""
    path = settings.signing_key_file
    if settings.audit_signing_key_file is None and not path.exists():
        _create_key(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(
            f"no audit signing key at {path} (PROVENIQ_AUDIT_SIGNING_KEY_FILE); create one with "
            "`openssl genpkey -algorithm ed25519 -out FILE`"
        ) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read the audit signing key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CheckpointError(
            f"{path} is not an unencrypted PEM private key (want Ed25519)"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CheckpointError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    if path.stat().st_mode & 0o077:
        log.warning("audit_signing_key_readable_by_others", path=str(path))
    return key


def _create_key(path: Path) -> None:
    """Write a new key to ``path`` unless another process got there first (link is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".audit-key-")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    log.info("audit_signing_key_created", path=str(path))


def checkpoint_path(directory: Path, seq: int) -> Path:
    return directory / f"{seq:012d}.json"


def public_key_path(directory: Path, kid: str) -> Path:
    return directory / f"public-key-{kid}.pem"


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # a checkpoint and a public key are for anyone to read
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write(directory: Path, checkpoint: Checkpoint, public: Ed25519PublicKey) -> Path:
    """Write the checkpoint's file (and its public key's, once); return the checkpoint's path."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        key_path = public_key_path(directory, checkpoint.key_id)
        if not key_path.exists():
            _write_atomically(key_path, public_pem(public))
        path = checkpoint_path(directory, checkpoint.seq)
        body = json.dumps(checkpoint.document(), indent=2, sort_keys=True) + "\n"
        _write_atomically(path, body.encode())
    except OSError as exc:
        raise CheckpointError(f"cannot write a checkpoint in {directory}: {exc}") from None
    return path


def read(path: Path) -> Checkpoint:
    """The checkpoint in ``path``; ``CheckpointError`` when missing or not a checkpoint."""
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint file {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not JSON ({exc.msg} at line {exc.lineno})") from None
    try:
        return Checkpoint.parse(doc)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def read_public_key(path: Path) -> Ed25519PublicKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read the public key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise CheckpointError(f"{path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise CheckpointError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def _latest_in(directory: Path, public: Ed25519PublicKey) -> Checkpoint | None:
    """The highest checkpoint in ``directory`` that ``public`` signed (others are ignored)."""
    try:
        names = sorted(
            (int(m[1]), m[0]) for e in os.scandir(directory) if (m := _NAME.fullmatch(e.name))
        )
    except OSError:  # none yet, or unreadable: writing there will say so
        return None
    for _, name in reversed(names):
        try:
            found = read(directory / name)
        except CheckpointError:
            continue
        if found.verifies(public):
            return found
    return None


# --- checking the log against a checkpoint --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """What ``check`` found: whether the log holds the checkpoint, in one line either way."""

    ok: bool
    message: str
    last_seq: int = 0
    head: str = audit.GENESIS
    checked: int = 0


def _truncated(seq: int, last: int) -> str:
    return (
        f"audit log TRUNCATED: seq {seq}, covered by the checkpoint, is missing "
        f"(the log ends at seq {last})"
    )


def _rewritten(seq: int, found: str, signed: str) -> str:
    return (
        f"audit log REWRITTEN: the hash at seq {seq} is {found[:16]}…, "
        f"the checkpoint signed {signed[:16]}…"
    )


def _broken(report: audit.ChainReport) -> str:
    return (
        f"audit chain BROKEN at row id={report.broken_id} seq={report.broken_seq}: {report.reason}"
    )


async def check(pool: db.Pool, checkpoint: Checkpoint) -> Verdict:
    """The log holds exactly what ``checkpoint`` covered and only grew since (the signature is
    the caller's to check)."""
    covered = await audit.verify(pool, upto=checkpoint.seq)
    if not covered.ok:
        return Verdict(False, _broken(covered))
    if covered.last_seq < checkpoint.seq:
        return Verdict(False, _truncated(checkpoint.seq, covered.last_seq))
    if covered.head != checkpoint.head_hash:
        return Verdict(False, _rewritten(checkpoint.seq, covered.head, checkpoint.head_hash))
    grown = await audit.verify(pool, after=checkpoint.seq, prev=checkpoint.head_hash)
    if not grown.ok:
        return Verdict(False, _broken(grown))
    return Verdict(
        True,
        f"audit log holds checkpoint seq {checkpoint.seq} (signed {checkpoint.signed_at} by "
        f"key {checkpoint.key_id}) and only grew since: {grown.checked} rows after it, "
        f"{covered.checked + grown.checked} rows verified",
        grown.last_seq,
        grown.head,
        covered.checked + grown.checked,
    )


async def _extends(pool: db.Pool, base: Checkpoint | None) -> Verdict:
    """The chain still extends ``base`` (the whole chain verifies when there is none): only
    the rows after it are recomputed, since ``base`` vouches for the ones before."""
    if base is None:
        report = await audit.verify(pool)
        if not report.ok:
            return Verdict(False, _broken(report))
        return Verdict(True, "", report.last_seq, report.head)
    async with db.connection(pool) as conn:
        row = await db.fetch_one(conn, "audit_hash_at", {"seq": base.seq})
        last = await db.fetch_one(conn, "audit_last_sealed")
    if row is None:
        return Verdict(False, _truncated(base.seq, last["seq"] if last else 0))
    if row["hash"] != base.head_hash:
        return Verdict(False, _rewritten(base.seq, row["hash"], base.head_hash))
    report = await audit.verify(pool, after=base.seq, prev=base.head_hash)
    if not report.ok:
        return Verdict(False, _broken(report))
    return Verdict(True, "", report.last_seq, report.head)


# --- taking checkpoints ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """What ``take`` did: wrote ``checkpoint`` to ``path``, or skipped (``reason``)."""

    checkpoint: Checkpoint | None = None
    path: Path | None = None
    reason: str = ""
    refused: bool = False


async def take(pool: db.Pool, settings: Settings, *, force: bool = False) -> Outcome:
    """Seal, check the chain still extends the last trusted checkpoint, then sign and write a
    new one. Without ``force`` (the periodic worker) it skips while another process is at it,
    while the last checkpoint is younger than the interval, or when the log has not grown.

    ``CheckpointError`` when the key or the directory fails, or when the chain no longer
    extends the last checkpoint (then a critical alert is raised and nothing is signed).
    """
    await audit.seal(pool)
    key = await asyncio.to_thread(signing_key, settings)
    async with db.transaction(pool) as conn:
        outcome = await _take_locked(conn, pool, settings, key, force=force)
    if outcome.refused:
        log.error("audit_checkpoint_refused", reason=outcome.reason)
        raise ChainBrokenError(f"no checkpoint signed: {outcome.reason}")
    if outcome.checkpoint is not None:
        cp = outcome.checkpoint
        log.info("audit_checkpoint", seq=cp.seq, key_id=cp.key_id, path=str(outcome.path))
    return outcome


async def _take_locked(
    conn: db.Conn, pool: db.Pool, settings: Settings, key: Ed25519PrivateKey, *, force: bool
) -> Outcome:
    """``take``'s work in its transaction, which holds the checkpoint lock."""
    lock = await db.fetch_one(
        conn, "audit_checkpoint_lock", {"wait": force, "key": CHECKPOINT_LOCK}
    )
    if not (lock and lock["locked"]):
        return Outcome(reason="another process is writing a checkpoint")
    interval = settings.audit_checkpoint_interval
    last = await db.fetch_one(conn, "audit_checkpoint_last", {"interval": interval})
    if not force and last is not None and last["recent"]:
        return Outcome(reason=f"the last checkpoint (seq {last['seq']}) is recent")
    public = key.public_key()
    base = await _trusted_base(settings.checkpoint_dir, public, last)
    found = await _extends(pool, base)
    if not found.ok:
        await alerts.raise_alert(
            conn,
            code=ALERT_CODE,
            severity="critical",
            message=f"no checkpoint signed: {found.message}",
            dedup_key=ALERT_CODE,
            subject={"checkpointSeq": base.seq if base else None},
        )
        return Outcome(reason=found.message, refused=True)  # the alert commits
    if found.last_seq == 0:
        return Outcome(reason="the audit log has no sealed rows yet")
    if not force and last is not None and last["seq"] == found.last_seq:
        return Outcome(reason=f"no new audit rows since the checkpoint at seq {last['seq']}")
    clock = await db.fetch_one(conn, "audit_checkpoint_clock")
    assert clock is not None
    checkpoint = sign(key, found.last_seq, found.head, clock["now"])
    await db.execute(
        conn,
        "insert_audit_checkpoint",
        {
            "seq": checkpoint.seq,
            "head_hash": checkpoint.head_hash,
            "key_id": checkpoint.key_id,
            "signed_at": clock["now"],
            "signature": checkpoint.signature,
        },
    )
    await outbox.emit(conn, OPERATOR_TENANT, EVENT, checkpoint.document())
    # Written before the commit: a failed write rolls the row and the event back.
    path = await asyncio.to_thread(write, settings.checkpoint_dir, checkpoint, public)
    return Outcome(checkpoint, path)


async def _trusted_base(
    directory: Path, public: Ed25519PublicKey, last: db.Row | None
) -> Checkpoint | None:
    """The highest checkpoint this key signed: the database's last or the directory's, when
    its signature holds (an attacker can delete either, which only means more to verify)."""
    candidates = [await asyncio.to_thread(_latest_in, directory, public)]
    if last is not None:
        signed_at = last["signed_at"].astimezone(UTC).isoformat(timespec="milliseconds")
        row = Checkpoint(
            last["seq"],
            last["head_hash"],
            signed_at.replace("+00:00", "Z"),
            last["key_id"],
            last["signature"],
        )
        candidates.append(row if row.verifies(public) else None)
    trusted = [c for c in candidates if c is not None]
    return max(trusted, key=lambda c: c.seq) if trusted else None


async def run(pool: db.Pool, settings: Settings) -> None:
    """The periodic checkpointer of a worker: one interval after it starts, then every
    interval (the last checkpoint's time, shared by all workers, decides who writes)."""
    while True:
        await asyncio.sleep(settings.audit_checkpoint_interval)
        try:
            outcome = await take(pool, settings)
            if outcome.checkpoint is None:
                log.debug("audit_checkpoint_skipped", reason=outcome.reason)
        except CheckpointError as exc:
            log.error("audit_checkpoint_error", error=str(exc))
        except CoreError as exc:
            log.warning("audit_checkpoint_error", error=str(exc))
