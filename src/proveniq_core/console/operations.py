"""Operations: the retry queue, held assets, sagas, circuits, lockers, alerts and webhooks.

Tables filter through the URL (shareable links) and page by cursor. Every action is one the
HTTP API offers, run through the same function under the signed-in key's name and scope; its
result is shown on the page it returns to, with a link to where it is recorded.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from proveniq_core import db
from proveniq_core.api.circuits import circuit_view, resettable, visible_snapshots
from proveniq_core.api.paging import decode_position as _decode_position
from proveniq_core.api.paging import encode_cursor as _encode_cursor
from proveniq_core.console import timeline
from proveniq_core.console.sessions import Session
from proveniq_core.console.web import (
    Viewer,
    checked_form,
    core,
    need_page,
    redirect,
    render,
    safe_next,
)
from proveniq_core.errors import CoreError, ForbiddenError, NotFoundError
from proveniq_core.ledger import alerts, assets
from proveniq_core.saga import operator, store
from proveniq_core.webhooks import endpoints

log = structlog.get_logger(__name__)

router = APIRouter(include_in_schema=False)

READ, WRITE, HOOKS = "ops:read", "ops:write", "webhooks:manage"
PAGE = 50
ENTRY_STATUSES = ("pending", "retrying", "exhausted", "resolved", "discarded")
SAGA_STATUSES = store.SAGA_STATUSES
MAINTENANCE_HOURS = (0.5, 1, 2, 4, 8, 24, 72)
DELIVERY_STATUSES = ("pending", "delivering", "delivered", "failed")
Ref = Annotated[str, Path(max_length=200)]


async def _page(
    request: Request, query: str, filters: dict[str, Any], cursor: str, order_by: str
) -> tuple[list[db.Row], str | None]:
    """One page by (``order_by``, id) descending, as the API's list routes page."""
    before = _decode_position(cursor) if cursor else None
    params = filters | {
        "before_at": before[0] if before else None,
        "before_id": before[1] if before else None,
        "limit": PAGE + 1,
    }
    async with db.connection(core(request).pool) as conn:
        rows = await db.fetch_all(conn, query, params)
    if len(rows) <= PAGE:
        return rows, None
    rows = rows[:PAGE]
    return rows, _encode_cursor(rows[-1][order_by].isoformat(), str(rows[-1]["id"]))


def _back(form: dict[str, str], default: str) -> str:
    return safe_next(form.get("back") or default)


def _refused(exc: CoreError) -> tuple[str, str]:
    return ("error", f"Refused ({exc.code}): {exc.message}")


async def _render(
    request: Request, session: Session, template: str, context: dict[str, Any], tab: str
) -> Response:
    return await render(request, session, template, context | {"tab": tab}, section="operations")


# --- the retry queue -------------------------------------------------------------------------


@router.get("/console/ops")
async def operations_home(request: Request, session: Viewer) -> Response:
    """Operations opens on the retry queue."""
    need_page(session, READ)
    return redirect(request, "/console/ops/retry-queue")


@router.get("/console/ops/retry-queue")
async def retry_queue(
    request: Request,
    session: Viewer,
    status: Annotated[str, Query(max_length=32)] = "",
    asset: Annotated[str, Query(max_length=64)] = "",
    cursor: Annotated[str, Query(max_length=200)] = "",
) -> Response:
    """Deferred links: attempt n of the maximum, next try, last error; retry or discard."""
    need_page(session, READ)
    tenant = session.principal.tenant_id
    try:
        asset_id = str(uuid.UUID(asset)) if asset else None
    except ValueError:
        asset_id = None
    rows, next_cursor = await _page(
        request,
        "list_retry_entries",
        {
            "tenant_id": tenant,
            "asset_id": asset_id,
            "status": status if status in ENTRY_STATUSES else None,
        },
        cursor,
        "created_at",
    )
    async with db.connection(core(request).pool) as conn:
        counts = {
            r["status"]: r["n"]
            for r in await db.fetch_all(conn, "console_retry_counts", {"tenant_id": tenant})
        }
        discards = {
            r["entity_id"]: r
            for r in await db.fetch_all(
                conn,
                "console_entry_reasons",
                {"ids": [str(r["id"]) for r in rows if r["status"] == "discarded"]},
            )
        }
    context = {
        "rows": rows,
        "status": status,
        "asset": asset,
        "statuses": ENTRY_STATUSES,
        "counts": counts,
        "discards": discards,
        "next_cursor": next_cursor,
        "max_attempts": core(request).settings.retry_max_attempts,
    }
    return await _render(request, session, "ops_retry.html", context, "retry")


async def _entry_message(request: Request, tenant: str, row: db.Row, verb: str) -> str:
    async with db.connection(core(request).pool) as conn:
        asset = await assets.get(conn, tenant, str(row["asset_id"]))
    return (
        f"{verb} entry {str(row['id'])[:8]} of “{asset['name']}”: the entry is "
        f"{row['status']}, the asset {asset['status']}."
    )


_GOING_ON = " The locker has not answered yet: it goes on, and the asset's page follows it."


@router.post("/console/ops/retry-queue/{entry_id}/retry")
async def retry_entry(request: Request, session: Viewer, entry_id: Ref) -> Response:
    """Retry now, as ``POST /api/ops/retry-queue/{id}/retry``."""
    form = await checked_form(request, session, WRITE)
    back = _back(form, "/console/ops/retry-queue")
    p = session.principal
    try:
        row, settled = await operator.retry_entry(
            core(request).retry_queue,
            entry_id,
            p.tenant_id,
            actor=p.actor,
            request_id=request.state.request_id,
            wait=core(request).operator_wait,
        )
    except CoreError as exc:
        return redirect(request, back, _refused(exc))
    text = await _entry_message(request, p.tenant_id, row, "Retried")
    if not settled:
        text += _GOING_ON
    return redirect(request, back, ("ok", text), href=f"/console/assets/{row['asset_id']}#audit")


@router.post("/console/ops/retry-queue/{entry_id}/discard")
async def discard_entry(request: Request, session: Viewer, entry_id: Ref) -> Response:
    """Stop retrying, with a reason, as ``POST /api/ops/retry-queue/{id}/discard``."""
    form = await checked_form(request, session, WRITE)
    back = _back(form, "/console/ops/retry-queue")
    reason = form.get("reason", "").strip()
    if not reason or len(reason) > 500:
        return redirect(request, back, ("error", "Not discarded: say why (up to 500 characters)."))
    p = session.principal
    try:
        row = await operator.discard_entry(
            core(request).retry_queue,
            entry_id,
            p.tenant_id,
            actor=p.actor,
            request_id=request.state.request_id,
            reason=reason,
        )
    except CoreError as exc:
        return redirect(request, back, _refused(exc))
    text = await _entry_message(request, p.tenant_id, row, "Discarded")
    text += " It stays held until an operator retries or cancels it."
    return redirect(request, back, ("ok", text), href=f"/console/assets/{row['asset_id']}#audit")


@router.post("/console/ops/retry-queue/retry-exhausted")
async def retry_exhausted(request: Request, session: Viewer) -> Response:
    """Retry every exhausted entry, as ``POST /api/ops/retry-queue/retry-exhausted``."""
    form = await checked_form(request, session, WRITE)
    back = _back(form, "/console/ops/retry-queue?status=exhausted")
    p = session.principal
    retried, refused = await operator.retry_exhausted(
        core(request).retry_queue,
        p.tenant_id,
        actor=p.actor,
        request_id=request.state.request_id,
        wait=core(request).operator_wait,
    )
    linked = sum(1 for r in retried if r["status"] == "resolved")
    going = sum(1 for r in retried if r["status"] == "retrying")
    text = (
        f"Retried {len(retried)} exhausted entr{'y' if len(retried) == 1 else 'ies'}: "
        f"{linked} linked, {going} waiting for the locker, "
        f"{len(retried) - linked - going} still failing"
        + (f", {len(refused)} refused ({refused[0][1].message})" if refused else "")
        + "."
    )
    return redirect(request, back, ("ok" if not refused else "error", text))


# --- held assets ---------------------------------------------------------------------------


@router.get("/console/ops/held")
async def held(request: Request, session: Viewer) -> Response:
    """Assets the failure path holds (pending_link, link_failed), the longest-held first."""
    need_page(session, READ)
    async with db.connection(core(request).pool) as conn:
        rows = await db.fetch_all(
            conn, "console_held_assets", {"tenant_id": session.principal.tenant_id, "limit": 200}
        )
    return await _render(request, session, "ops_held.html", {"rows": rows}, "held")


@router.post("/console/ops/assets/{asset_id}/retry-link")
async def retry_link(request: Request, session: Viewer, asset_id: Ref) -> Response:
    """Link again with a fresh command, as ``POST /api/ops/assets/{id}/retry-link``."""
    form = await checked_form(request, session, WRITE)
    back = _back(form, "/console/ops/held")
    c, p = core(request), session.principal
    try:
        result = await operator.retry_link(
            c.engine,
            asset_id,
            p.tenant_id,
            actor=p.actor,
            request_id=request.state.request_id,
            wait=c.operator_wait,
        )
    except CoreError as exc:
        return redirect(request, back, _refused(exc))
    async with db.connection(c.pool) as conn:
        asset = await assets.get(conn, p.tenant_id, asset_id)
    text = f"Retried the link of “{asset['name']}”: it is now {asset['status']}."
    if result is None:
        text += _GOING_ON
    return redirect(request, back, ("ok", text), href=f"/console/assets/{asset_id}#audit")


@router.post("/console/ops/assets/{asset_id}/cancel")
async def cancel(request: Request, session: Viewer, asset_id: Ref) -> Response:
    """Cancel a held registration (it compensates), as ``POST /api/ops/assets/{id}/cancel``."""
    form = await checked_form(request, session, WRITE)
    back = _back(form, "/console/ops/held")
    c, p = core(request), session.principal
    try:
        result = await operator.cancel(
            c.engine,
            asset_id,
            p.tenant_id,
            actor=p.actor,
            request_id=request.state.request_id,
            wait=c.operator_wait,
        )
    except CoreError as exc:
        return redirect(request, back, _refused(exc))
    if result is None:
        text = f"Cancelling the registration of asset {asset_id[:8]}: its undo is under way."
        text += _GOING_ON
    else:
        text = f"Cancelled the registration of asset {asset_id[:8]}: its saga is {result.status}."
    return redirect(request, back, ("ok", text), href=f"/console/assets/{asset_id}#audit")


# --- sagas ---------------------------------------------------------------------------------


@router.get("/console/ops/sagas")
async def sagas(
    request: Request,
    session: Viewer,
    status: Annotated[str, Query(max_length=32)] = "",
    name: Annotated[str, Query(max_length=200)] = "",
    cursor: Annotated[str, Query(max_length=200)] = "",
) -> Response:
    """Sagas newest first, filtered by status and name."""
    need_page(session, READ)
    rows, next_cursor = await _page(
        request,
        "list_sagas",
        {
            "tenant_id": session.principal.tenant_id,
            "status": status if status in SAGA_STATUSES else None,
            "name": name or None,
        },
        cursor,
        "created_at",
    )
    context = {
        "rows": rows,
        "status": status,
        "name": name,
        "statuses": SAGA_STATUSES,
        "next_cursor": next_cursor,
    }
    return await _render(request, session, "ops_sagas.html", context, "sagas")


@router.get("/console/ops/sagas/{saga_id}")
async def saga(request: Request, session: Viewer, saga_id: Ref) -> Response:
    """One saga's steps on a time axis, and each attempt's row."""
    need_page(session, READ)
    try:
        uuid.UUID(saga_id)
    except ValueError:
        raise NotFoundError(f"saga {saga_id} not found") from None
    async with db.connection(core(request).pool) as conn:
        found = await store.load(conn, saga_id)
    if found is None or found[0]["tenant_id"] not in (None, session.principal.tenant_id):
        raise NotFoundError(f"saga {saga_id} not found")
    row, steps = found
    context = {"saga": row, "steps": steps, "timeline": timeline.build(row, steps)}
    return await _render(request, session, "ops_saga.html", context, "sagas")


# --- circuits ------------------------------------------------------------------------------


@router.get("/console/ops/circuits")
async def circuits(request: Request, session: Viewer) -> Response:
    """Every circuit of this process with its state and the time to its next probe."""
    need_page(session, READ)
    breakers = core(request).breakers
    snapshots = await visible_snapshots(core(request), session.principal)
    views = [circuit_view(s, breakers) for s in snapshots]
    views.sort(key=lambda v: (v.state == "closed", v.name))
    now = datetime.now(UTC)
    rows = [(v, now + timedelta(seconds=v.retryAfter)) for v in views]
    return await _render(request, session, "ops_circuits.html", {"rows": rows}, "circuits")


@router.post("/console/ops/circuits/{name}/reset")
async def reset_circuit(request: Request, session: Viewer, name: Ref) -> Response:
    """Close a circuit now, as ``POST /api/ops/circuits/{name}/reset`` (logged, not audited:
    the audit trail lives in the database that may be why it opened)."""
    form = await checked_form(request, session, WRITE)
    back = _back(form, "/console/ops/circuits")
    try:
        breaker = await resettable(core(request), session.principal, name)
    except (NotFoundError, ForbiddenError) as exc:
        return redirect(request, back, ("error", exc.message))
    was = breaker.state.value
    log.warning("circuit_reset", circuit=name, was=was, actor=session.principal.actor)
    breaker.reset()
    return redirect(request, back, ("ok", f"Circuit {name} reset: it was {was}, it is closed."))


# --- lockers -------------------------------------------------------------------------------


@router.get("/console/ops/lockers")
async def lockers(request: Request, session: Viewer) -> Response:
    """Lockers with presence (since when), site, geofence and maintenance."""
    need_page(session, READ)
    c = core(request)
    async with db.connection(c.pool) as conn:
        rows = await db.fetch_all(
            conn,
            "list_lockers",
            {"tenant_id": session.principal.tenant_id, "after": "", "limit": 1000},
        )
    items = [
        {
            "row": r,
            "online": c.gateway.presence(r["locker_ref"]),
            "since": c.gateway.presence_since(r["locker_ref"]),
        }
        for r in rows
    ]
    context = {"rows": items, "hours": MAINTENANCE_HOURS}
    return await _render(request, session, "ops_lockers.html", context, "lockers")


@router.post("/console/ops/lockers/{locker_ref}/maintenance")
async def maintenance(request: Request, session: Viewer, locker_ref: Ref) -> Response:
    """Start maintenance for some hours, or end it, as ``POST /api/ops/lockers/{ref}/
    maintenance``."""
    form = await checked_form(request, session, WRITE)
    back = _back(form, "/console/ops/lockers")
    until = None
    if form.get("hours"):
        try:
            hours = float(form["hours"])
        except ValueError:
            hours = 0.0
        if hours not in MAINTENANCE_HOURS:
            return redirect(request, back, ("error", "Choose how long the maintenance lasts."))
        until = datetime.now(UTC) + timedelta(hours=hours)
    p = session.principal
    try:
        row, woken = await operator.set_maintenance(
            core(request).retry_queue,
            p.tenant_id,
            locker_ref,
            until,
            actor=p.actor,
            request_id=request.state.request_id,
        )
    except CoreError as exc:
        return redirect(request, back, _refused(exc))
    if row["maintenance_until"] is not None:
        text = (
            f"{locker_ref} is in maintenance until "
            f"{row['maintenance_until']:%Y-%m-%d %H:%M} UTC: its links wait."
        )
    else:
        text = f"{locker_ref}: maintenance ended; {woken} deferred link(s) retried now."
    return redirect(request, back, ("ok", text))


# --- alerts --------------------------------------------------------------------------------


@router.get("/console/ops/alerts")
async def alert_list(
    request: Request,
    session: Viewer,
    state: Annotated[str, Query(max_length=16)] = "open",
    cursor: Annotated[str, Query(max_length=200)] = "",
) -> Response:
    """Alerts, most recent first: open ones by default."""
    need_page(session, READ)
    open_ = {"open": True, "resolved": False}.get(state)
    rows, next_cursor = await _page(
        request,
        "list_alerts",
        {"tenant_id": session.principal.tenant_id, "open": open_, "code": None},
        cursor,
        "last_at",
    )
    context = {"rows": rows, "state": state, "next_cursor": next_cursor}
    return await _render(request, session, "ops_alerts.html", context, "alerts")


async def _alert_action(request: Request, session: Session, alert_id: str, verb: str) -> Response:
    form = await checked_form(request, session, WRITE)
    back = _back(form, "/console/ops/alerts")
    p = session.principal
    act = alerts.acknowledge if verb == "acknowledge" else alerts.resolve
    try:
        row = await act(
            core(request).pool,
            alert_id=alert_id,
            tenant_id=p.tenant_id,
            actor=p.actor,
            request_id=request.state.request_id,
        )
    except CoreError as exc:
        return redirect(request, back, _refused(exc))
    done = "Acknowledged" if verb == "acknowledge" else "Resolved"
    return redirect(request, back, ("ok", f"{done} {row['code']}: {row['message']}"))


@router.post("/console/ops/alerts/{alert_id}/acknowledge")
async def acknowledge(request: Request, session: Viewer, alert_id: Ref) -> Response:
    """As ``POST /api/ops/alerts/{id}/acknowledge``."""
    return await _alert_action(request, session, alert_id, "acknowledge")


@router.post("/console/ops/alerts/{alert_id}/resolve")
async def resolve(request: Request, session: Viewer, alert_id: Ref) -> Response:
    """As ``POST /api/ops/alerts/{id}/resolve``."""
    return await _alert_action(request, session, alert_id, "resolve")


# --- webhooks ------------------------------------------------------------------------------


@router.get("/console/ops/webhooks")
async def webhooks(
    request: Request, session: Viewer, cursor: Annotated[str, Query(max_length=200)] = ""
) -> Response:
    """The tenant's webhook subscriptions."""
    need_page(session, HOOKS)
    rows, next_cursor = await _page(
        request,
        "list_webhook_endpoints",
        {"tenant_id": session.principal.tenant_id},
        cursor,
        "created_at",
    )
    context = {"rows": rows, "next_cursor": next_cursor}
    return await _render(request, session, "ops_webhooks.html", context, "webhooks")


@router.get("/console/ops/webhooks/{webhook_id}")
async def webhook(
    request: Request,
    session: Viewer,
    webhook_id: Ref,
    status: Annotated[str, Query(max_length=32)] = "",
    cursor: Annotated[str, Query(max_length=200)] = "",
) -> Response:
    """One subscription's deliveries, each with its attempts; redeliver any."""
    need_page(session, HOOKS)
    c = core(request)
    async with db.connection(c.pool) as conn:
        endpoint = await endpoints.get(conn, session.principal.tenant_id, webhook_id)
    rows, next_cursor = await _page(
        request,
        "list_webhook_deliveries",
        {
            "endpoint_id": endpoint.id,
            "status": status
            if status in ("pending", "delivering", "delivered", "failed")
            else None,
        },
        cursor,
        "created_at",
    )
    async with db.connection(c.pool) as conn:
        deliveries = [endpoints.Delivery.from_row(r) for r in rows]
        attempts = await endpoints.attempts_by_delivery(conn, deliveries)
    context = {
        "endpoint": endpoint,
        "rows": rows,
        "attempts": attempts,
        "status": status,
        "next_cursor": next_cursor,
    }
    return await _render(request, session, "ops_webhook.html", context, "webhooks")


@router.post("/console/ops/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver")
async def redeliver(
    request: Request, session: Viewer, webhook_id: Ref, delivery_id: Ref
) -> Response:
    """Send the message again, as ``POST /api/webhooks/{id}/deliveries/{d}/redeliver``."""
    form = await checked_form(request, session, HOOKS)
    back = _back(form, f"/console/ops/webhooks/{webhook_id}")
    p = session.principal
    try:
        async with db.transaction(core(request).pool) as conn:
            row = await endpoints.redeliver(
                conn,
                p.tenant_id,
                webhook_id,
                delivery_id,
                actor=p.actor,
                request_id=request.state.request_id,
            )
    except CoreError as exc:
        return redirect(request, back, _refused(exc))
    text = f"Redelivery {str(row.id)[:8]} queued: the same message id, sent again now."
    return redirect(request, back, ("ok", text))


@router.post("/console/ops/webhooks/{webhook_id}/enable")
async def enable(request: Request, session: Viewer, webhook_id: Ref) -> Response:
    """Make a disabled subscription active again, as ``POST /api/webhooks/{id}/enable``."""
    form = await checked_form(request, session, HOOKS)
    back = _back(form, f"/console/ops/webhooks/{webhook_id}")
    p = session.principal
    try:
        async with db.transaction(core(request).pool) as conn:
            await endpoints.enable(
                conn, p.tenant_id, webhook_id, actor=p.actor, request_id=request.state.request_id
            )
    except CoreError as exc:
        return redirect(request, back, _refused(exc))
    return redirect(request, back, ("ok", "Enabled: waiting deliveries resume."))
