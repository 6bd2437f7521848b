"""The console's server-side sessions, in PostgreSQL (migration 0009).

Signing in with an API key opens a session: the browser keeps a random token in an HttpOnly
cookie, the database keeps its SHA-256, the key it stands for and the CSRF token of its
forms. Every request re-reads the key, so revoking it ends its sessions at once; a session
unused for the idle timeout is gone.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from proveniq_core import db
from proveniq_core.ledger.keys import Principal


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in person: their key's principal and the CSRF token of their forms."""

    principal: Principal
    csrf_token: str
    token_hash: bytes

    def can(self, scope: str) -> bool:
        return scope in self.principal.scopes

    @property
    def name(self) -> str:
        return self.principal.actor


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def open_session(pool: db.Pool, principal: Principal, idle: float) -> tuple[str, Session]:
    """A new session for ``principal``; returns the cookie's token (shown only now)."""
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    async with db.transaction(pool) as conn:
        await db.execute(conn, "console_session_purge", {"idle": idle})
        await db.execute(
            conn,
            "console_session_create",
            {"id_hash": _hash(token), "key_id": principal.key_id, "csrf_token": csrf},
        )
    return token, Session(principal, csrf, _hash(token))


async def load(pool: db.Pool, token: str, idle: float, *, touch: bool = True) -> Session | None:
    """The live session of ``token``, or None (unknown, idle too long, or its key revoked)."""
    async with db.transaction(pool) as conn:
        row = await db.fetch_one(
            conn, "console_session_touch", {"id_hash": _hash(token), "idle": idle, "touch": touch}
        )
    if row is None:
        return None
    principal = Principal(row["key_id"], row["tenant_id"], frozenset(row["scopes"]), row["name"])
    return Session(principal, row["csrf_token"], _hash(token))


async def close(pool: db.Pool, session: Session) -> None:
    async with db.transaction(pool) as conn:
        await db.execute(conn, "console_session_delete", {"id_hash": session.token_hash})
