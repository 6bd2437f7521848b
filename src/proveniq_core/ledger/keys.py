"""API keys: ``pk_<id>_<secret>``; only a SHA-256 of the secret is stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from proveniq_core import db
from proveniq_core.ledger import audit

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


async def authenticate(pool: db.Pool, token: str) -> Principal | None:
    parsed = parse(token)
    if parsed is None:
        return None
    key_id, secret = parsed
    async with db.connection(pool) as conn:
        row = await db.fetch_one(conn, "get_api_key", {"id": key_id})
    if row is None or not hmac.compare_digest(bytes(row["secret_hash"]), _digest(secret)):
        return None
    return Principal(row["id"], row["tenant_id"], frozenset(row["scopes"]))
