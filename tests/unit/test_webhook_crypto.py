"""Webhook secrets sealed at rest: the key, its file, rotation, and values from before."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from proveniq_core.config import Settings
from proveniq_core.webhooks import crypto, signing
from proveniq_core.webhooks.crypto import SecretBox, SecretKeyError

KEY = "k" * 40
OTHER = "o" * 40


def test_a_sealed_secret_opens_only_with_its_key() -> None:
    """Sealing hides the secret; the same key opens it, another key cannot."""
    secret = signing.new_secret()
    sealed = SecretBox([KEY]).seal(secret)
    assert sealed.startswith("fernet:") and secret not in sealed
    assert SecretBox([KEY]).open(sealed) == secret
    with pytest.raises(SecretKeyError, match="another key"):
        SecretBox([OTHER]).open(sealed)


def test_rotation_opens_old_values_and_seals_with_the_first_key() -> None:
    """``new,old``: values sealed under the old key still open; new ones use the new key."""
    secret = signing.new_secret()
    old = SecretBox([OTHER]).seal(secret)
    rotated = SecretBox([KEY, OTHER])
    assert rotated.open(old) == secret
    assert SecretBox([KEY]).open(rotated.seal(secret)) == secret


def test_plain_values_from_before_sealing_still_read() -> None:
    """A plain whsec_ secret (stored before sealing) reads as it is; anything else not."""
    secret = signing.new_secret()
    assert SecretBox([KEY]).open(secret) == secret
    with pytest.raises(SecretKeyError):
        SecretBox([KEY]).open("gibberish")


def test_sealed_bytes_round_trip_and_plain_bytes_pass() -> None:
    """Stored response bodies: sealed ones open, bodies stored before sealing pass as they are."""
    box = SecretBox([KEY])
    body = b'{"secret":"whsec_abc"}'
    assert b"whsec_abc" not in box.seal_bytes(body)
    assert box.open_bytes(box.seal_bytes(body)) == body
    assert box.open_bytes(body) == body


def test_a_short_key_is_refused() -> None:
    """PROVENIQ_SECRET_KEY shorter than 32 characters is refused, saying so."""
    with pytest.raises(SecretKeyError, match="at least 32"):
        SecretBox(["short"])


def test_without_a_configured_key_a_private_key_file_is_made_once(tmp_path: Path) -> None:
    """No PROVENIQ_SECRET_KEY: <home>/secret-key is created with mode 0600 and reused."""
    secret = signing.new_secret()
    sealed = crypto.box_for(Settings(home=tmp_path)).seal(secret)
    path = tmp_path / crypto.KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_text()
    crypto.key_file(tmp_path)
    assert path.read_text() == first
    assert SecretBox([first.strip()]).open(sealed) == secret


def test_a_configured_key_is_used_and_no_file_made(tmp_path: Path) -> None:
    """PROVENIQ_SECRET_KEY set: it seals, and nothing is written under home."""
    box = crypto.box_for(Settings(home=tmp_path, secret_key=f"{KEY},{OTHER}"))
    assert SecretBox([KEY]).open(box.seal("whsec_x")) == "whsec_x"
    assert not (tmp_path / crypto.KEY_FILE).exists()
