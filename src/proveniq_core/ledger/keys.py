"""API keys: ``pk_<id>_<secret>``; only a SHA-256 of the secret is stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from proveniq_core import db
from proveniq_core.errors import LedgerDownError
from proveniq_core.ledger import audit

log = structlog.get_logger(__name__)

SCOPES: tuple[str, ...] = (
    "assets:read",
    "assets:write",
    "reviews:decide",
    "webhooks:manage",
    "ops:read",
    "ops:write",
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key, its tenant and what it may do."""

    key_id: str
    tenant_id: str
    scopes: frozenset[str]
    name: str = ""
    """The person (or service) the key was created for, ``keys create --name``."""

    @property
    def actor(self) -> str:
        """Who the audit trail records for this caller: the key's name, else ``key:<id>``."""
        return self.name or f"key:{self.key_id}"


def _digest(secret: str) -> bytes:
    # The secret has 192 bits of entropy, so a fast hash is enough (no password stretching).
    return hashlib.sha256(secret.encode()).digest()


def parse(token: str) -> tuple[str, str] | None:
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != "pk" or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


async def ensure_tenant(conn: db.Conn, tenant_id: str, name: str | None = None) -> None:
    await db.execute(conn, "insert_tenant", {"id": tenant_id, "name": name or tenant_id})


async def create_key(
    pool: db.Pool,
    tenant_id: str,
    scopes: list[str] | tuple[str, ...],
    name: str = "",
    *,
    actor: str = "system:cli",
) -> str:
    """Create a key (and its tenant if new); return the plaintext, shown only now."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope(s): {', '.join(unknown)}; known: {', '.join(SCOPES)}")
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(24)
    async with db.transaction(pool) as conn:
        await ensure_tenant(conn, tenant_id)
        await db.execute(
            conn,
            "insert_api_key",
            {
                "id": key_id,
                "tenant_id": tenant_id,
                "name": name,
                "secret_hash": _digest(secret),
                "scopes": sorted(set(scopes)),
            },
        )
        await audit.record(
            conn,
            actor=actor,
            action="api_key.created",
            entity_type="api_key",
            entity_id=key_id,
            tenant_id=tenant_id,
            after={"scopes": sorted(set(scopes)), "name": name},
        )
    return f"pk_{key_id}_{secret}"


class KeyCache:
    """Keys the database verified lately, to authenticate while the ledger is down.

    Consulted only when the database cannot be reached, so a revocation takes effect at once
    while it can. During an outage, a key the database verified in the last ``ttl`` seconds
    still authenticates (meanwhile only a process that still reaches the database can revoke
    it); what it can do then is what needs no database: read and reset circuits. Holds the key
    id, the secret's hash and the principal, never the secret.
    """

    def __init__(self, ttl: float = 300.0, *, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self._clock = clock
        self._verified: dict[str, tuple[bytes, Principal, float]] = {}

    def remember(self, token: str, principal: Principal) -> None:
        if (parsed := parse(token)) is not None:
            self._verified[parsed[0]] = (_digest(parsed[1]), principal, self._clock())

    def forget(self, token: str) -> None:
        if (parsed := parse(token)) is not None:
            self._verified.pop(parsed[0], None)

    def recall(self, token: str) -> Principal | None:
        parsed = parse(token)
        entry = self._verified.get(parsed[0]) if parsed is not None else None
        if parsed is None or entry is None or self._clock() - entry[2] > self.ttl:
            return None
        return entry[1] if hmac.compare_digest(entry[0], _digest(parsed[1])) else None


async def authenticate(
    pool: db.Pool, token: str, cache: KeyCache | None = None
) -> Principal | None:
    """The principal of ``token``, or None if it is not a valid key.

    With ``cache``: a key the database cannot check now (``LedgerDownError``) is taken from
    the cache if it verified lately; otherwise the error propagates."""
    parsed = parse(token)
    if parsed is None:
        return None
    key_id, secret = parsed
    try:
        async with db.connection(pool) as conn:
            row = await db.fetch_one(conn, "get_api_key", {"id": key_id})
    except LedgerDownError:
        principal = cache.recall(token) if cache is not None else None
        if principal is None:
            raise
        log.info("api_key_from_cache", key_id=key_id)
        return principal
    if row is None:  # unknown or revoked
        if cache is not None:
            cache.forget(token)
        return None
    if not hmac.compare_digest(bytes(row["secret_hash"]), _digest(secret)):
        return None
    principal = Principal(row["id"], row["tenant_id"], frozenset(row["scopes"]), row["name"])
    if cache is not None:
        cache.remember(token, principal)
    return principal
