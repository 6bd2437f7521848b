"""Which lockers an operator's key may act on: its tenant's, or every one with scope ``admin``.

A locker belongs to the tenant that registered it (``lockers`` table; a ref is unique across
tenants). Another tenant's locker is answered as not found, so its existence does not leak.
"""

from __future__ import annotations

from proveniq_core import db
from proveniq_core.errors import ForbiddenError, NotFoundError
from proveniq_core.ledger.keys import Principal

ADMIN = "admin"
"""The scope for fleet-wide actions: every tenant's lockers, ``"*"`` faults, shared circuits."""


def is_admin(principal: Principal) -> bool:
    """Whether the key may act on every tenant's lockers."""
    return ADMIN in principal.scopes


def require_admin(principal: Principal, what: str) -> None:
    """403 ``E_FORBIDDEN`` unless the key has scope ``admin``; ``what`` names the action."""
    if not is_admin(principal):
        raise ForbiddenError(f"{what} needs the scope {ADMIN!r}.")


async def tenant_locker_refs(pool: db.Pool, principal: Principal) -> set[str]:
    """The refs of the lockers registered by the caller's tenant."""
    async with db.connection(pool) as conn:
        rows = await db.fetch_all(conn, "tenant_locker_refs", {"tenant_id": principal.tenant_id})
    return {row["locker_ref"] for row in rows}


async def check_locker(pool: db.Pool, principal: Principal, locker_ref: str) -> None:
    """404 unless ``locker_ref`` is the caller's tenant's locker (any locker for ``admin``)."""
    if is_admin(principal):
        return
    async with db.connection(pool) as conn:
        row = await db.fetch_one(
            conn, "get_locker", {"tenant_id": principal.tenant_id, "locker_ref": locker_ref}
        )
    if row is None:
        raise NotFoundError(f"No locker {locker_ref!r}.")


__all__ = ["ADMIN", "check_locker", "is_admin", "require_admin", "tenant_locker_refs"]
