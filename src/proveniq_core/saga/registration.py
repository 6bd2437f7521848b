"""The asset registration saga (DESIGN.md §2): ledger record, locker link, status, verification."""

from __future__ import annotations

import uuid
from typing import Any

from proveniq_core import db
from proveniq_core.ledger import assets
from proveniq_core.locker.gateway import LockerGateway
from proveniq_core.saga.engine import SagaDefinition, Step, StepContext

NAME = "asset_registration"
_COMMANDS = uuid.UUID("6f1c7a52-1d55-4c1e-9b0e-3d2f4a6b8c90")


def command_id(ctx: StepContext, suffix: str = "") -> str:
    """A locker commandId stable across re-executions of the same step."""
    return str(uuid.uuid5(_COMMANDS, ctx.idempotency_key + suffix))


def registration_saga(gateway: LockerGateway, *, link_timeout: float) -> SagaDefinition:
    """Build the saga; ``link_timeout`` bounds the wait for the locker (seconds)."""

    def audit_ctx(ctx: StepContext) -> dict[str, Any]:
        return {
            "actor": ctx.data["actor"],
            "request_id": ctx.data.get("requestId"),
            "saga_id": ctx.saga_id,
        }

    async def create_record(ctx: StepContext) -> dict[str, Any]:
        d = ctx.data
        await assets.create(
            ctx.tx,
            asset_id=d["assetId"],
            tenant_id=d["tenantId"],
            name=d["name"],
            category=d["category"],
            locker_ref=d["lockerRef"],
            saga_id=ctx.saga_id,
            actor=d["actor"],
            request_id=d.get("requestId"),
        )
        return {}

    async def void_record(ctx: StepContext) -> None:
        await assets.transition(ctx.tx, ctx.data["assetId"], "compensated", **audit_ctx(ctx))

    async def link(ctx: StepContext) -> dict[str, Any]:
        result = await gateway.send(
            ctx.data["lockerRef"],
            "link",
            command_id=command_id(ctx),
            asset_id=ctx.data["assetId"],
            timeout=link_timeout,
        )
        return {"lockerId": str(result["lockerId"])}

    async def unlink(ctx: StepContext) -> None:
        await gateway.send(
            ctx.data["lockerRef"],
            "unlink",
            command_id=command_id(ctx, ":unlink"),
            asset_id=ctx.data["assetId"],
            timeout=link_timeout,
        )

    async def mark_linked(ctx: StepContext) -> dict[str, Any]:
        await assets.transition(
            ctx.tx, ctx.data["assetId"], "linked", locker_id=ctx.data["lockerId"], **audit_ctx(ctx)
        )
        return {}

    async def mark_pending(ctx: StepContext) -> None:
        await assets.transition(ctx.tx, ctx.data["assetId"], "pending", **audit_ctx(ctx))

    async def queue_verification(ctx: StepContext) -> dict[str, Any]:
        await db.execute(
            ctx.tx,
            "insert_verification",
            {
                "id": ctx.data["verificationId"],
                "asset_id": ctx.data["assetId"],
                "tenant_id": ctx.data["tenantId"],
            },
        )
        return {}

    async def cancel_verification(ctx: StepContext) -> None:
        await db.execute(ctx.tx, "cancel_verification", {"asset_id": ctx.data["assetId"]})

    return SagaDefinition(
        NAME,
        (
            Step(
                "create_ledger_record",
                create_record,
                void_record,
                timeout=5.0,
                retries=3,
                transactional=True,
            ),
            Step("link_locker", link, unlink, timeout=link_timeout + 1.0, retries=0),
            Step(
                "update_status",
                mark_linked,
                mark_pending,
                timeout=5.0,
                retries=3,
                transactional=True,
            ),
            Step(
                "queue_verification",
                queue_verification,
                cancel_verification,
                timeout=5.0,
                retries=3,
                transactional=True,
            ),
        ),
    )
