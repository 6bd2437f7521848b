"""The webhooks API (DESIGN.md §6): a tenant's endpoints, their delivery log, redelivery.

Every route needs scope ``webhooks:manage`` and sees only the caller's tenant (another
tenant's endpoint is a 404). An endpoint's secret is shown once, in the answer that creates
it; it is stored sealed (``webhooks.crypto``), and so is that answer in the idempotency
store. A URL must reach a public address (``webhooks.destinations``) unless
``PROVENIQ_WEBHOOK_ALLOW_PRIVATE`` is set.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, Field, HttpUrl, field_validator

from proveniq_core import db
from proveniq_core.api.auth import require
from proveniq_core.api.deps import CoreDep
from proveniq_core.api.idempotency import IdempotencyKey, idempotent_model
from proveniq_core.api.models import ERRORS, Strict
from proveniq_core.api.paging import keyset_page
from proveniq_core.config import Settings
from proveniq_core.errors import ValidationFailedError
from proveniq_core.ledger import outbox
from proveniq_core.ledger.keys import Principal
from proveniq_core.ledger.outbox import EventType
from proveniq_core.webhooks import crypto, destinations, endpoints, signing
from proveniq_core.webhooks.endpoints import Delivery, DeliveryAttempt, Endpoint

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


def webhook_view(endpoint: Endpoint) -> WebhookView:
    return WebhookView(
        webhookId=str(endpoint.id),
        url=endpoint.url,
        events=list(endpoint.events),
        status=endpoint.status,
        disabledReason=endpoint.disabled_reason,
        disabledAt=endpoint.disabled_at,
        createdAt=endpoint.created_at,
        updatedAt=endpoint.updated_at,
    )


def delivery_view(delivery: Delivery, attempts: list[DeliveryAttempt]) -> DeliveryView:
    return DeliveryView(
        deliveryId=str(delivery.id),
        webhookId=str(delivery.endpoint_id),
        messageId=signing.message_id(delivery.event_id),
        eventType=delivery.event_type,
        payload=signing.payload(delivery.event_type, delivery.event_at, delivery.data),
        status=delivery.status,
        nextAttemptAt=delivery.next_attempt_at if delivery.status == "pending" else None,
        lastStatusCode=delivery.last_status_code,
        lastError=delivery.last_error,
        redeliveryOf=str(delivery.redelivery_of) if delivery.redelivery_of else None,
        createdAt=delivery.created_at,
        finishedAt=delivery.finished_at,
        attempts=[
            AttemptView(
                attempt=a.attempt,
                attemptedAt=a.attempted_at,
                durationMs=a.duration_ms,
                statusCode=a.status_code,
                error=a.error,
            )
            for a in attempts
        ],
    )


def _actor(principal: Principal) -> str:
    return principal.actor


async def _check_destination(url: str, settings: Settings) -> None:
    """422 unless ``url`` may receive webhooks. A name that does not resolve yet is
    accepted: every delivery checks it again, after resolving it."""
    try:
        await destinations.check(url, allow_private=settings.webhook_allow_private)
    except destinations.DestinationRefused as exc:
        problem = {"field": "url", "problem": str(exc), "type": "webhook_destination"}
        raise ValidationFailedError(f"Invalid request: url: {exc}", details=[problem]) from None
    except destinations.UnresolvedName:
        pass


@router.post("/api/webhooks", status_code=201, response_model=WebhookCreated, responses=ERRORS)
async def create_webhook(
    request: Request,
    core: CoreDep,
    body: WebhookCreate,
    principal: Manager,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Subscribe an endpoint to event types. The answer holds the signing secret, once (and
    again to a retry with the same ``Idempotency-Key``). The URL must reach a public address
    (422 otherwise) and carry no credentials."""
    url = str(body.url)
    await _check_destination(url, core.settings)
    box = crypto.box_for(core.settings)

    async def create() -> WebhookCreated:
        secret = body.secret or signing.new_secret()
        async with db.transaction(core.pool) as conn:
            endpoint = await endpoints.create(
                conn,
                tenant_id=principal.tenant_id,
                url=url,
                events=body.events,
                secret=box.seal(secret),
                actor=_actor(principal),
                request_id=request.state.request_id,
            )
        return WebhookCreated(**webhook_view(endpoint).model_dump(), secret=secret)

    return await idempotent_model(
        request,
        core.pool,
        tenant_id=principal.tenant_id,
        body=body,
        status_code=201,
        make=create,
        sealer=box,
    )


@router.get("/api/webhooks", response_model=WebhookPage, responses=ERRORS)
async def list_webhooks(
    core: CoreDep,
    principal: Manager,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> WebhookPage:
    """The tenant's endpoints, newest first, in pages."""
    rows, next_cursor = await keyset_page(
        core.pool,
        "list_webhook_endpoints",
        {"tenant_id": principal.tenant_id},
        limit,
        cursor,
        "created_at",
    )
    items = [webhook_view(Endpoint.from_row(r)) for r in rows]
    return WebhookPage(items=items, nextCursor=next_cursor)


@router.get("/api/webhooks/{webhook_id}", response_model=WebhookView, responses=ERRORS)
async def get_webhook(core: CoreDep, webhook_id: WebhookId, principal: Manager) -> WebhookView:
    async with db.connection(core.pool) as conn:
        return webhook_view(await endpoints.get(conn, principal.tenant_id, webhook_id))


@router.delete("/api/webhooks/{webhook_id}", status_code=204, responses=ERRORS)
async def delete_webhook(
    request: Request, core: CoreDep, webhook_id: WebhookId, principal: Manager
) -> Response:
    """Unsubscribe: the endpoint, its pending deliveries and its delivery log are deleted."""
    async with db.transaction(core.pool) as conn:
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
    request: Request, core: CoreDep, webhook_id: WebhookId, principal: Manager
) -> WebhookView:
    """Make a disabled endpoint active again: its waiting deliveries resume."""
    async with db.transaction(core.pool) as conn:
        endpoint = await endpoints.enable(
            conn,
            principal.tenant_id,
            webhook_id,
            actor=_actor(principal),
            request_id=request.state.request_id,
        )
    return webhook_view(endpoint)


@router.get("/api/webhooks/{webhook_id}/deliveries", response_model=DeliveryPage, responses=ERRORS)
async def list_deliveries(
    core: CoreDep,
    webhook_id: WebhookId,
    principal: Manager,
    status: Annotated[DeliveryStatus | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> DeliveryPage:
    """The endpoint's deliveries, newest first, each with its attempt log."""
    async with db.connection(core.pool) as conn:
        endpoint = await endpoints.get(conn, principal.tenant_id, webhook_id)
    rows, next_cursor = await keyset_page(
        core.pool,
        "list_webhook_deliveries",
        {"endpoint_id": endpoint.id, "status": status},
        limit,
        cursor,
        "created_at",
    )
    deliveries = [Delivery.from_row(r) for r in rows]
    async with db.connection(core.pool) as conn:
        attempts = await endpoints.attempts_by_delivery(conn, deliveries)
    return DeliveryPage(
        items=[delivery_view(d, attempts[d.id]) for d in deliveries], nextCursor=next_cursor
    )


@router.post(
    "/api/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
    status_code=202,
    response_model=DeliveryView,
    responses={**ERRORS, 409: {"description": "the endpoint is disabled: enable it first"}},
)
async def redeliver(
    request: Request,
    core: CoreDep,
    webhook_id: WebhookId,
    delivery_id: DeliveryId,
    principal: Manager,
) -> DeliveryView:
    """Send the delivery's message again (same webhook-id): a new delivery, due now, with a
    fresh retry schedule. The answer is that new delivery, pending."""
    async with db.transaction(core.pool) as conn:
        delivery = await endpoints.redeliver(
            conn,
            principal.tenant_id,
            webhook_id,
            delivery_id,
            actor=_actor(principal),
            request_id=request.state.request_id,
        )
    return delivery_view(delivery, [])
