"""The transactional outbox: events written in the transaction of the change they report.

``emit`` inserts the event and one delivery per active endpoint of the tenant subscribed to
its type, in the caller's transaction: an event exists exactly when its change committed
(none for a rolled-back change, none lost), and the delivery workers are woken at commit.
With no subscribed endpoint it writes nothing. The message a receiver gets is drawn up by
``webhooks.signing``.
"""

from __future__ import annotations

import uuid
from typing import Any, Final, Literal, get_args

from proveniq_core import db

EventType = Literal[
    "asset.created",
    "asset.linked",
    "asset.link_deferred",
    "asset.link_failed",
    "asset.compensated",
    "verification.completed",
    "review.required",
    "ops.alert",
    "audit.checkpoint",
]
EVENTS: Final[tuple[str, ...]] = get_args(EventType)
"""Every event type an endpoint may subscribe to."""

ASSET_STATUS_EVENTS: Final = {
    "linked": "asset.linked",
    "pending_link": "asset.link_deferred",
    "link_failed": "asset.link_failed",
    "compensated": "asset.compensated",
}
"""The event an asset's move into a status emits (other statuses emit none)."""


async def emit(conn: db.Conn, tenant_id: str, event_type: str, data: dict[str, Any]) -> None:
    """Write the event ``event_type`` with ``data`` (camelCase JSON) to the tenant's outbox.

    Call it inside the transaction of the change it reports. ``ValueError`` for a type not in
    ``EVENTS`` (a programming error, raised before anything is written).
    """
    if event_type not in EVENTS:
        raise ValueError(f"unknown webhook event type {event_type!r}")
    await db.execute(
        conn,
        "emit_webhook_event",
        {
            "id": uuid.uuid4(),
            "tenant_id": tenant_id,
            "type": event_type,
            "data": db.jsonb(data),
        },
    )
