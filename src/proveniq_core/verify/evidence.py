"""Content-addressed evidence blobs on disk: ``<root>/ab/cdef…`` named by SHA-256."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


class EvidenceStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:]

    def put(self, data: bytes, sha256: str | None = None) -> str:
        """Store ``data`` once (atomically); return its SHA-256.

        ``sha256``: the SHA-256 of ``data`` if already known (computed here otherwise).
        """
        digest = hashlib.sha256(data).hexdigest() if sha256 is None else sha256
        directory = os.path.join(self.root, digest[:2])
        target = os.path.join(directory, digest[2:])
        if os.path.exists(target):
            return digest
        fd, tmp = _mkstemp(directory)
        try:
            _write_and_close(fd, data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest

    def get(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()


def _mkstemp(directory: str) -> tuple[int, str]:
    """A new temporary file in ``directory``, creating the directory if it is missing."""
    try:
        return tempfile.mkstemp(dir=directory, prefix=".tmp-")
    except FileNotFoundError:
        os.makedirs(directory, exist_ok=True)
        return tempfile.mkstemp(dir=directory, prefix=".tmp-")


def _write_and_close(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` unbuffered (one system call for a photo), then close it."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
