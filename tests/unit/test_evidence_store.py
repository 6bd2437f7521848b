"""Evidence blobs: stored once under their SHA-256, and a job's photos inspected and stored."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from proveniq_core.locker.simulator import evidence_photo
from proveniq_core.verify.analysis import Photo, inspect_photo
from proveniq_core.verify.evidence import EvidenceStore
from proveniq_core.verify.worker import inspect_and_store


@pytest.fixture
def data() -> bytes:
    return evidence_photo("asset-1")


def test_put_creates_missing_directories_and_leaves_no_temp_file(
    tmp_path: Path, data: bytes
) -> None:
    """Into a root that does not exist yet: the blob at ``ab/cdef…``, nothing else beside it."""
    store = EvidenceStore(tmp_path / "evidence")
    digest = store.put(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert store.path(digest) == tmp_path / "evidence" / digest[:2] / digest[2:]
    assert store.get(digest) == data
    assert os.listdir(store.path(digest).parent) == [digest[2:]]
    other = evidence_photo("asset-2")
    assert store.get(store.put(other)) == other  # another prefix: its directory too


def test_put_with_the_digest_given_stores_the_same_file(tmp_path: Path, data: bytes) -> None:
    """A caller that already has the digest gets the same file as one that has it computed."""
    digest = hashlib.sha256(data).hexdigest()
    computed, given = EvidenceStore(tmp_path / "a"), EvidenceStore(tmp_path / "b")
    assert computed.put(data) == given.put(data, sha256=digest) == digest
    assert computed.get(digest) == given.get(digest) == data
    assert computed.path(digest).relative_to(tmp_path / "a") == given.path(digest).relative_to(
        tmp_path / "b"
    )


def test_put_keeps_the_first_copy(tmp_path: Path, data: bytes) -> None:
    """A blob already stored is not written again."""
    store = EvidenceStore(tmp_path)
    digest = store.put(data)
    before = store.path(digest).stat()
    assert store.put(data) == store.put(data, sha256=digest) == digest
    after = store.path(digest).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_photo_digest_is_computed_once_at_construction(data: bytes) -> None:
    """``Photo.sha256`` is the digest of its bytes, whatever the device claimed."""
    photo = Photo("0" * 64, "image/jpeg", data)
    assert photo.sha256 == hashlib.sha256(data).hexdigest()
    assert inspect_photo(data, photo.sha256) == inspect_photo(data)


def test_inspect_and_store_gives_each_photos_facts_and_stores_it(
    tmp_path: Path, data: bytes
) -> None:
    """Facts in the photos' order, as ``inspect_photo`` gives them; every photo stored, the
    undecodable one included."""
    junk = b"\xff\xd8 this is not a JPEG"
    photos = [Photo("", "image/jpeg", d) for d in (data, junk, data)]
    store = EvidenceStore(tmp_path)
    facts = inspect_and_store(store, photos)
    assert facts == [inspect_photo(p.data) for p in photos]
    assert not facts[1].decodable
    for p in photos:
        assert store.get(p.sha256) == p.data
