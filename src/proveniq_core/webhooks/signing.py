"""Standard Webhooks v1 on the wire: the message, its signature, endpoint secrets, ``Retry-After``.

What a receiver gets for an event of the outbox (``ledger.outbox``)::

    {"type": "asset.linked", "timestamp": "2025-01-01T12:00:00.123456Z",
     "data": {"assetId": "…", "status": "linked", …}}

``timestamp`` is when the transaction that wrote the event began; the ``webhook-id``
header is the event id, the same for every attempt and every endpoint.

A secret is ``whsec_`` + base64 of 32 random bytes; the HMAC key is the decoded bytes. The
signature of a message is ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` with the
timestamp in whole Unix seconds, as the ``standardwebhooks`` library verifies it.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import hmac
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any, Final

PREFIX: Final = "whsec_"
MIN_KEY_BYTES: Final = 24
MAX_KEY_BYTES: Final = 64


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret; ``ValueError`` unless it is one, 24 to 64 bytes."""
    if not secret.startswith(PREFIX):
        raise ValueError(f"must start with {PREFIX!r}")
    encoded = secret.removeprefix(PREFIX)
    try:  # padding optional, as the standardwebhooks libraries read it
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError(f"must be {PREFIX!r} followed by base64") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise ValueError(f"must encode {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes")
    return key


def message_id(event_id: uuid.UUID) -> str:
    """The ``webhook-id`` of an event: the same on every attempt, endpoint and redelivery."""
    return f"msg_{event_id.hex}"


def payload(event_type: str, at: datetime, data: dict[str, Any]) -> dict[str, Any]:
    """The JSON body a receiver gets for an event written at ``at``."""
    timestamp = at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return {"type": event_type, "timestamp": timestamp, "data": data}


def signature(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    """The ``webhook-signature`` header value for one attempt."""
    mac = hmac.new(secret_key(secret), f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def headers(secret: str, msg_id: str, at: datetime, body: str) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt made at ``at``."""
    timestamp = int(at.timestamp())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, msg_id, timestamp, body),
    }


def retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from ``now`` that a ``Retry-After`` header asks to wait (delay-seconds or an
    HTTP date); ``None`` when absent or unreadable, never negative."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())
