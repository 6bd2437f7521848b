"""The audit trail: append-only rows, sealed into a SHA-256 hash chain.

A state change inserts its audit row in its own transaction (``record``), unsealed. The
sealer (``seal``) then gives rows, in the order it first sees them committed, a sequence
number and ``hash = sha256(prev_hash || "\\n" || canonical(row))``. Sealing off the hot path
keeps registrations from serialising on one chain head; the database refuses any other
UPDATE, and every DELETE or TRUNCATE. ``verify`` recomputes the chain, from the start or
from a signed checkpoint's head (``ledger.checkpoints``: what proves the log was not truncated
or re-chained).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from proveniq_core import db

GENESIS = "0" * 64
AUDIT_LOCK = 0x41554454  # "AUDT": one sealer at a time
_SEAL_BATCH = 1000


def canonical(row: dict[str, Any]) -> str:
    """The row's content as stable JSON: what the chain hash covers."""
    at = row["at"]
    doc = {
        "id": row["id"],
        "seq": row["seq"],
        "at": at.astimezone(UTC).isoformat() if isinstance(at, datetime) else at,
        "tenantId": row["tenant_id"],
        "actor": row["actor"],
        "action": row["action"],
        "entityType": row["entity_type"],
        "entityId": row["entity_id"],
        "before": row["before"],
        "after": row["after"],
        "requestId": row["request_id"],
        "sagaId": str(row["saga_id"]) if row["saga_id"] is not None else None,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)


def chain_hash(prev_hash: str, row: dict[str, Any]) -> str:
    return hashlib.sha256(f"{prev_hash}\n{canonical(row)}".encode()).hexdigest()


async def record(
    conn: db.Conn,
    *,
    actor: str,
    action: str,
    entity_type: str,
    entity_id: str,
    tenant_id: str | None,
    before: Any = None,
    after: Any = None,
    request_id: str | None = None,
    saga_id: str | None = None,
) -> None:
    """Append one audit row inside the caller's transaction."""
    await db.execute(
        conn,
        "insert_audit",
        {
            "tenant_id": tenant_id,
            "actor": actor,
            "action": action,
            "entity_type": entity_type,
            "entity_id": entity_id,
            "before": db.jsonb(before) if before is not None else None,
            "after": db.jsonb(after) if after is not None else None,
            "request_id": request_id,
            "saga_id": saga_id,
        },
    )


async def seal(pool: db.Pool) -> int:
    """Seal every committed, unsealed row; return how many were sealed."""
    total = 0
    while True:
        async with db.transaction(pool) as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (AUDIT_LOCK,))
            last = await db.fetch_one(conn, "audit_last_sealed")
            seq, prev = (last["seq"], last["hash"]) if last else (0, GENESIS)
            rows = await db.fetch_all(conn, "audit_unsealed", {"limit": _SEAL_BATCH})
            sealed = []  # (id, seq, prev_hash, hash) per row
            for row in rows:
                seq += 1
                row["seq"] = seq
                digest = chain_hash(prev, row)
                sealed.append((row["id"], seq, prev, digest))
                prev = digest
            if sealed:
                ids, seqs, prev_hashes, hashes = (list(col) for col in zip(*sealed, strict=True))
                params = {"ids": ids, "seqs": seqs, "prev_hashes": prev_hashes, "hashes": hashes}
                await db.execute(conn, "audit_seal", params)
        total += len(rows)
        if len(rows) < _SEAL_BATCH:
            return total


@dataclass(frozen=True, slots=True)
class ChainReport:
    """What ``verify`` found: rows checked, rows still unsealed, the first broken row, and the
    last row that held (its seq and hash: the head of what was checked)."""

    checked: int
    unsealed: int
    broken_id: int | None = None
    broken_seq: int | None = None
    reason: str | None = None
    last_seq: int = 0
    head: str = GENESIS

    @property
    def ok(self) -> bool:
        return self.broken_id is None


async def verify(
    pool: db.Pool, *, after: int = 0, prev: str = GENESIS, upto: int | None = None
) -> ChainReport:
    """Recompute the chain from the row after seq ``after`` (whose hash is ``prev``; the start
    by default) up to seq ``upto`` (the end by default); name the first row that does not hold.
    """
    checked, seq = 0, after
    async with db.connection(pool) as conn:
        while upto is None or seq < upto:
            rows = await db.fetch_all(conn, "audit_chain", {"after": seq, "limit": 5000})
            for row in rows:
                if upto is not None and row["seq"] > upto:
                    break
                broken = None
                if row["seq"] != seq + 1:
                    broken = f"gap: expected seq {seq + 1}"
                elif row["prev_hash"] != prev:
                    broken = "prev_hash does not link"
                elif chain_hash(prev, row) != row["hash"]:
                    broken = "content does not match hash"
                if broken is not None:
                    return ChainReport(checked, 0, row["id"], row["seq"], broken, seq, prev)
                prev = row["hash"]
                checked += 1
                seq = row["seq"]
            if not rows or (upto is not None and rows[-1]["seq"] > upto):
                break
        unsealed = await db.fetch_one(conn, "audit_unsealed_count")
    return ChainReport(checked, unsealed["n"] if unsealed else 0, last_seq=seq, head=prev)
