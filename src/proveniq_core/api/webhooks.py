"""The webhooks API (DESIGN.md §6): a tenant's endpoints, their delivery log, redelivery.

Every route needs scope ``webhooks:manage`` and sees only the caller's tenant (another
tenant's endpoint is a 404). An endpoint's secret is shown once, in the answer that creates
it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, Field, HttpUrl, field_validator

from proveniq_core import db
from proveniq_core.api.auth import require
from proveniq_core.api.idempotency import IdempotencyKey, idempotent_model
from proveniq_core.api.models import Strict
from proveniq_core.api.routes import ERRORS, _keyset_page
from proveniq_core.ledger.keys import Principal
from proveniq_core.webhooks import endpoints, outbox, signing
from proveniq_core.webhooks.outbox import EventType

router = APIRouter(tags=["webhooks"])

Manager = Annotated[Principal, Depends(require("webhooks:manage"))]
WebhookId = Annotated[str, Path(description="the endpoint's webhookId")]
DeliveryId = Annotated[str, Path(description="the delivery's deliveryId")]
DeliveryStatus = Literal["pending", "delivering", "delivered", "failed"]


class WebhookCreate(Strict):
    url: HttpUrl = Field(description="http or https URL the events are POSTed to")
    events: list[EventType] = Field(
        min_length=1, max_length=len(outbox.EVENTS), description="event types to receive"
    )
    secret: str | None = Field(
        None,
        max_length=200,
        description="whsec_ + base64 of 24 to 64 bytes; generated when absent",
        examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    )

    @field_validator("events")
    @classmethod
    def _unique(cls, events: list[EventType]) -> list[EventType]:
        return list(dict.fromkeys(events))

    @field_validator("secret")
    @classmethod
    def _whsec(cls, secret: str | None) -> str | None:
        if secret is not None:
            signing.secret_key(secret)
        return secret


class WebhookView(BaseModel):
    webhookId: str
    url: str
    events: list[str]
    status: Literal["active", "disabled"] = Field(
        description="disabled: after 410 Gone or failing for 24 h; gets no new events"
    )
    disabledReason: str | None
    disabledAt: datetime | None
    createdAt: datetime
    updatedAt: datetime


class WebhookCreated(WebhookView):
    secret: str = Field(description="verifies the signatures; shown only in this answer")


class WebhookPage(BaseModel):
    items: list[WebhookView]
    nextCursor: str | None


class AttemptView(BaseModel):
    """One HTTP attempt of a delivery."""

    attempt: int = Field(description="1 for the first")
    attemptedAt: datetime
    durationMs: float
    statusCode: int | None = Field(description="null: no HTTP answer (timeout, refused, …)")
    error: str | None = Field(description="null: delivered")


class DeliveryView(BaseModel):
    """One event sent to one endpoint, with its attempt log."""

    deliveryId: str
    webhookId: str
    messageId: str = Field(
        description="the webhook-id header: the same on every attempt and redelivery"
    )
    eventType: str
    payload: dict[str, Any] = Field(description="the JSON body sent")
    status: DeliveryStatus
    nextAttemptAt: datetime | None = Field(description="pending: when it is tried next")
    lastStatusCode: int | None
    lastError: str | None
    redeliveryOf: str | None = Field(description="the delivery this one repeats, if any")
    createdAt: datetime
    finishedAt: datetime | None
    attempts: list[AttemptView]


class DeliveryPage(BaseModel):
    items: list[DeliveryView]
    nextCursor: str | None


def webhook_view(row: db.Row) -> WebhookView:
    return WebhookView(
        webhookId=str(row["id"]),
        url=row["url"],
        events=row["events"],
        status=row["status"],
        disabledReason=row["disabled_reason"],
        disabledAt=row["disabled_at"],
        createdAt=row["created_at"],
        updatedAt=row["updated_at"],
    )


def delivery_view(row: db.Row, attempts: list[db.Row]) -> DeliveryView:
    return DeliveryView(
        deliveryId=str(row["id"]),
        webhookId=str(row["endpoint_id"]),
        messageId=outbox.message_id(row["event_id"]),
        eventType=row["type"],
        payload=outbox.payload(row["type"], row["event_at"], row["data"]),
        status=row["status"],
        nextAttemptAt=row["next_attempt_at"] if row["status"] == "pending" else None,
        lastStatusCode=row["last_status_code"],
        lastError=row["last_error"],
        redeliveryOf=str(row["redelivery_of"]) if row["redelivery_of"] else None,
        createdAt=row["created_at"],
        finishedAt=row["finished_at"],
        attempts=[
            AttemptView(
                attempt=a["attempt"],
                attemptedAt=a["attempted_at"],
                durationMs=a["duration_ms"],
                statusCode=a["status_code"],
                error=a["error"],
            )
            for a in attempts
        ],
    )


def _actor(principal: Principal) -> str:
    return principal.actor


@router.post("/api/webhooks", status_code=201, response_model=WebhookCreated, responses=ERRORS)
async def create_webhook(
    request: Request,
    body: WebhookCreate,
    principal: Manager,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Subscribe an endpoint to event types. The answer holds the signing secret, once (and
    again to a retry with the same ``Idempotency-Key``)."""
    pool = request.app.state.core.pool

    async def create() -> WebhookCreated:
        secret = body.secret or signing.new_secret()
        async with db.transaction(pool) as conn:
            row = await endpoints.create(
                conn,
                tenant_id=principal.tenant_id,
                url=str(body.url),
                events=body.events,
                secret=secret,
                actor=_actor(principal),
                request_id=request.state.request_id,
            )
        return WebhookCreated(**webhook_view(row).model_dump(), secret=secret)

    return await idempotent_model(
        request, pool, tenant_id=principal.tenant_id, body=body, status_code=201, make=create
    )


@router.get("/api/webhooks", response_model=WebhookPage, responses=ERRORS)
async def list_webhooks(
    request: Request,
    principal: Manager,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> WebhookPage:
    """The tenant's endpoints, newest first, in pages."""
    rows, next_cursor = await _keyset_page(
        request,
        "list_webhook_endpoints",
        {"tenant_id": principal.tenant_id},
        limit,
        cursor,
        "created_at",
    )
    return WebhookPage(items=[webhook_view(r) for r in rows], nextCursor=next_cursor)


@router.get("/api/webhooks/{webhook_id}", response_model=WebhookView, responses=ERRORS)
async def get_webhook(request: Request, webhook_id: WebhookId, principal: Manager) -> WebhookView:
    async with db.connection(request.app.state.core.pool) as conn:
        return webhook_view(await endpoints.get(conn, principal.tenant_id, webhook_id))


@router.delete("/api/webhooks/{webhook_id}", status_code=204, responses=ERRORS)
async def delete_webhook(request: Request, webhook_id: WebhookId, principal: Manager) -> Response:
    """Unsubscribe: the endpoint, its pending deliveries and its delivery log are deleted."""
    async with db.transaction(request.app.state.core.pool) as conn:
        await endpoints.delete(
            conn,
            principal.tenant_id,
            webhook_id,
            actor=_actor(principal),
            request_id=request.state.request_id,
        )
    return Response(status_code=204)


@router.post("/api/webhooks/{webhook_id}/enable", response_model=WebhookView, responses=ERRORS)
async def enable_webhook(
    request: Request, webhook_id: WebhookId, principal: Manager
) -> WebhookView:
    """Make a disabled endpoint active again: its waiting deliveries resume."""
    async with db.transaction(request.app.state.core.pool) as conn:
        row = await endpoints.enable(
            conn,
            principal.tenant_id,
            webhook_id,
            actor=_actor(principal),
            request_id=request.state.request_id,
        )
    return webhook_view(row)


@router.get("/api/webhooks/{webhook_id}/deliveries", response_model=DeliveryPage, responses=ERRORS)
async def list_deliveries(
    request: Request,
    webhook_id: WebhookId,
    principal: Manager,
    status: Annotated[DeliveryStatus | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> DeliveryPage:
    """The endpoint's deliveries, newest first, each with its attempt log."""
    pool = request.app.state.core.pool
    async with db.connection(pool) as conn:
        endpoint = await endpoints.get(conn, principal.tenant_id, webhook_id)
    rows, next_cursor = await _keyset_page(
        request,
        "list_webhook_deliveries",
        {"endpoint_id": endpoint["id"], "status": status},
        limit,
        cursor,
        "created_at",
    )
    async with db.connection(pool) as conn:
        attempts = await endpoints.attempts_by_delivery(conn, rows)
    return DeliveryPage(
        items=[delivery_view(r, attempts[r["id"]]) for r in rows], nextCursor=next_cursor
    )


@router.post(
    "/api/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
    status_code=202,
    response_model=DeliveryView,
    responses={**ERRORS, 409: {"description": "the endpoint is disabled: enable it first"}},
)
async def redeliver(
    request: Request, webhook_id: WebhookId, delivery_id: DeliveryId, principal: Manager
) -> DeliveryView:
    """Send the delivery's message again (same webhook-id): a new delivery, due now, with a
    fresh retry schedule. The answer is that new delivery, pending."""
    async with db.transaction(request.app.state.core.pool) as conn:
        row = await endpoints.redeliver(
            conn,
            principal.tenant_id,
            webhook_id,
            delivery_id,
            actor=_actor(principal),
            request_id=request.state.request_id,
        )
    return delivery_view(row, [])
