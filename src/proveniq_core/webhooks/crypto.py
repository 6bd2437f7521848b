"""Webhook secrets at rest: sealed (Fernet: AES-128-CBC with HMAC-SHA256) under a key kept
outside the database, so a copy of the database alone cannot sign messages to receivers.

The key is ``PROVENIQ_SECRET_KEY`` (32 or more characters; ``new,old`` decrypts with either
and seals with the first, for rotation) or, when unset, a random key in
``<home>/secret-key`` created on first start with mode 0600. Every process that delivers or
creates webhooks needs the same key: set ``PROVENIQ_SECRET_KEY`` when processes do not share
a home. A sealed value is ``fernet:<token>``; rows written before sealing existed hold the
plain ``whsec_…`` secret, which ``SecretBox.open`` still reads and ``seal_plaintext_rows``
(run at start-up) rewrites sealed.
"""

from __future__ import annotations

import base64
import functools
import os
import secrets
from pathlib import Path
from typing import Final

import structlog
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from proveniq_core import db
from proveniq_core.config import Settings
from proveniq_core.webhooks.signing import PREFIX as PLAIN_PREFIX

log = structlog.get_logger(__name__)

SEALED_PREFIX: Final = "fernet:"
KEY_FILE: Final = "secret-key"
MIN_KEY_CHARS: Final = 32
_INFO: Final = b"proveniq-core webhook secrets v1"


class SecretKeyError(Exception):
    """The sealing key is unusable, or a sealed value was sealed under another key."""


def _fernet_key(material: str) -> bytes:
    """A Fernet key derived from ``material`` (HKDF-SHA256), so any long string will do."""
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(
        material.encode()
    )
    return base64.urlsafe_b64encode(raw)


class SecretBox:
    """Seals and opens webhook secrets with one key (or several, the first sealing)."""

    def __init__(self, materials: list[str]) -> None:
        if not materials:
            raise SecretKeyError("no secret key given")
        for material in materials:
            if len(material) < MIN_KEY_CHARS:
                raise SecretKeyError(
                    f"PROVENIQ_SECRET_KEY must be at least {MIN_KEY_CHARS} characters "
                    "(each, when several are given separated by commas)"
                )
        self._fernet = MultiFernet([Fernet(_fernet_key(m)) for m in materials])

    def seal(self, plain: str) -> str:
        return SEALED_PREFIX + self._fernet.encrypt(plain.encode()).decode("ascii")

    def open(self, stored: str) -> str:
        """The plain secret of a stored value: sealed, or plain from before sealing existed."""
        if stored.startswith(PLAIN_PREFIX):
            return stored
        if not stored.startswith(SEALED_PREFIX):
            raise SecretKeyError("not a sealed value")
        try:
            return self._fernet.decrypt(stored.removeprefix(SEALED_PREFIX)).decode()
        except InvalidToken:
            raise SecretKeyError(
                "sealed under another key: PROVENIQ_SECRET_KEY (or <home>/secret-key) differs "
                "from the one it was sealed with"
            ) from None

    def seal_bytes(self, plain: bytes) -> bytes:
        return SEALED_PREFIX.encode() + self._fernet.encrypt(plain)

    def open_bytes(self, stored: bytes) -> bytes:
        """``seal_bytes`` undone; bytes not sealed (stored before sealing) come back as they are."""
        if not stored.startswith(SEALED_PREFIX.encode()):
            return stored
        try:
            return self._fernet.decrypt(stored.removeprefix(SEALED_PREFIX.encode()))
        except InvalidToken:
            raise SecretKeyError("sealed under another key") from None


def key_file(home: Path) -> str:
    """The key in ``<home>/secret-key``, created (mode 0600) when absent."""
    path = home / KEY_FILE
    try:
        # O_EXCL: two processes starting at once agree on the one that was written first.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            log.warning("secret_key_file_readable_by_others", path=str(path))
        material = path.read_text().strip()
        if not material:
            raise SecretKeyError(f"{path} is empty; restore it from a backup") from None
        return material
    material = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii")
    with os.fdopen(fd, "w") as f:
        f.write(material + "\n")
    log.info("secret_key_file_created", path=str(path))
    return material


@functools.lru_cache(maxsize=8)
def _box(home: Path, configured: str | None) -> SecretBox:
    if configured:
        return SecretBox([m.strip() for m in configured.split(",") if m.strip()])
    return SecretBox([key_file(home)])


def box_for(settings: Settings) -> SecretBox:
    """The box of a process's settings (``secret_key``, else the key file under ``home``)."""
    secret = settings.secret_key
    return _box(settings.home, secret.get_secret_value() if secret is not None else None)


async def seal_plaintext_rows(pool: db.Pool, box: SecretBox) -> int:
    """Seal every endpoint secret still stored in plain text; the number sealed."""
    sealed = 0
    async with db.transaction(pool) as conn:
        for row in await db.fetch_all(conn, "plaintext_webhook_secrets"):
            params = {"id": row["id"], "plain": row["secret"], "sealed": box.seal(row["secret"])}
            sealed += await db.execute(conn, "seal_webhook_secret", params)
    if sealed:
        log.info("webhook_secrets_sealed", count=sealed)
    return sealed
