"""Keyset pages: a cursor holds the sort key of the previous page's last row, opaque to clients.

A page of ``limit`` rows is read as ``limit + 1``: the extra row says whether a next page
exists. A cursor that does not decode is a 422 on ``cursor``.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime
from typing import Any

from proveniq_core import db
from proveniq_core.errors import ValidationFailedError


def encode_cursor(*parts: str) -> str:
    """An opaque cursor that holds ``parts``."""
    return base64.urlsafe_b64encode("|".join(parts).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, n: int) -> list[str]:
    """The ``n`` parts of ``cursor``; ``ValidationFailedError`` unless it holds that many."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValidationFailedError("Invalid cursor.", details={"field": "cursor"}) from None
    parts = raw.split("|")
    if len(parts) != n:
        raise ValidationFailedError("Invalid cursor.", details={"field": "cursor"})
    return parts


def decode_position(cursor: str) -> tuple[datetime, str]:
    """A (timestamp, uuid) cursor: the sort key of the last row of the previous page."""
    at, row_id = decode_cursor(cursor, 2)
    try:
        return datetime.fromisoformat(at), str(uuid.UUID(row_id))
    except ValueError:
        raise ValidationFailedError("Invalid cursor.", details={"field": "cursor"}) from None


async def keyset_page(
    pool: db.Pool,
    query: str,
    filters: dict[str, Any],
    limit: int,
    cursor: str | None,
    order_by: str,
) -> tuple[list[db.Row], str | None]:
    """One page of ``query``, ordered by (``order_by``, id) descending, and the next cursor."""
    before = decode_position(cursor) if cursor else None
    params = filters | {
        "before_at": before[0] if before else None,
        "before_id": before[1] if before else None,
        "limit": limit + 1,
    }
    async with db.connection(pool) as conn:
        rows = await db.fetch_all(conn, query, params)
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1][order_by].isoformat(), str(rows[-1]["id"]))
