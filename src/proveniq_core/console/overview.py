"""The overview: is anything wrong, and what first? Readiness, the last hour's latency
against the SLO, circuits, the retry queue, alerts and the review backlog, on one screen."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from proveniq_core import db
from proveniq_core.api.circuits import circuit_view
from proveniq_core.console.web import Viewer, core, render, seconds
from proveniq_core.errors import CoreError
from proveniq_core.observability import slo
from proveniq_core.observability.window import REGISTRATIONS

router = APIRouter(include_in_schema=False)

SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2, "ok": 3}


@dataclass(frozen=True, slots=True)
class Attention:
    """One line of "Needs attention": how bad, what, and where to act on it."""

    severity: str
    text: str
    href: str
    action: str


async def readiness(c: Any) -> dict[str, Any]:
    """What ``/readyz`` answers: ready, degraded (serving, something is off) or unready."""
    checks: dict[str, str] = {}
    try:
        async with db.connection(c.pool) as conn:
            await conn.execute("SELECT 1")
            pending = await db.pending_migrations(conn)
        checks["database"] = "ok"
        checks["migrations"] = "ok" if not pending else f"pending: {pending}"
    except CoreError:
        checks["database"], checks["migrations"] = "down", "unknown"
    checks["broker"] = "ok" if c.gateway.connected else "degraded"
    if getattr(c, "worker_processes", None) is not None:
        up, started = c.worker_processes()
        checks["workers"] = "ok" if up == started else f"{up}/{started} up"
    not_closed = sorted(s["name"] for s in c.breakers.snapshots() if s["state"] != "closed")
    ready = checks["database"] == "ok" and checks["migrations"] == "ok"
    healthy = checks["broker"] == "ok" and checks.get("workers", "ok") == "ok" and not not_closed
    status = "ready" if ready and healthy else ("degraded" if ready else "unready")
    return {"status": status, "checks": checks, "open": not_closed}


def latency() -> dict[str, Any]:
    """P50/P95/P99 of registrations over the last hour, each beside its objective."""
    buckets, covered = REGISTRATIONS.recent()
    count = int(buckets[-1][1]) if buckets else 0
    rows = []
    for name, (q, target) in slo.SLO_TARGETS.items():
        value = slo.quantile(q, buckets)
        rows.append(
            {
                "name": name.upper(),
                "seconds": value,
                "target": target,
                "met": None if value is None else value <= target,
            }
        )
    per_minute = REGISTRATIONS.per_step()[-60:]
    return {
        "rows": rows,
        "count": count,
        "minutes": max(1, round(covered / 60)),
        "per_minute": per_minute,
        "last_minute": per_minute[-2] if len(per_minute) > 1 else None,
        "this_minute": per_minute[-1] if per_minute else 0,
    }


def sparkline(values: list[float], width: int = 160, height: int = 28) -> str:
    """SVG polyline points for a sparkline of ``values``."""
    if len(values) < 2:
        return ""
    top = max(values) or 1.0
    step = width / (len(values) - 1)
    return " ".join(
        f"{i * step:.1f},{height - 2 - (v / top) * (height - 4):.1f}" for i, v in enumerate(values)
    )


async def _counts(conn: db.Conn, query: str, tenant_id: str) -> dict[str, int]:
    rows = await db.fetch_all(conn, query, {"tenant_id": tenant_id})
    return {r[next(iter(r))]: int(r["n"]) for r in rows}


async def gather(request: Request, session: Viewer) -> dict[str, Any]:
    """Everything the overview shows that the session's scopes allow."""
    c = core(request)
    tenant = session.principal.tenant_id
    now = datetime.now(UTC)
    data: dict[str, Any] = {"ready": await readiness(c), "attention": []}
    attention: list[Attention] = data["attention"]
    for name in data["ready"]["open"]:
        attention.append(
            Attention("warning", f"circuit {name} is not closed", "/console/ops/circuits", "Open")
        )
    async with db.connection(c.pool) as conn:
        if session.can("ops:read"):
            data["latency"] = latency()
            data["spark"] = sparkline(data["latency"]["per_minute"])
            views = [circuit_view(s, c.breakers) for s in c.breakers.snapshots()]
            views.sort(key=lambda v: (v.state == "closed", v.name))
            # The subsystems always; a locker's own circuit only when it is not closed.
            shown = [v for v in views if v.state != "closed" or ":" not in v.name]
            data["circuits"] = [(v, now + timedelta(seconds=v.retryAfter)) for v in shown]
            data["devices_closed"] = sum(1 for v in views if v.state == "closed" and ":" in v.name)
            data["retry"] = await _counts(conn, "console_retry_counts", tenant)
            data["held"] = await _counts(conn, "console_held_counts", tenant)
            data["alerts"] = await _counts(conn, "console_alert_counts", tenant)
            for alert in await db.fetch_all(
                conn, "console_attention_alerts", {"tenant_id": tenant, "limit": 5}
            ):
                subject = alert["subject"] or {}
                href = (
                    f"/console/assets/{subject['assetId']}"
                    if subject.get("assetId")
                    else "/console/ops/alerts"
                )
                text = alert["message"] + (f" (×{alert['count']})" if alert["count"] > 1 else "")
                if alert["acknowledged_by"]:
                    text += f" · acknowledged by {alert['acknowledged_by']}"
                attention.append(Attention(alert["severity"], text, href, "Open"))
            exhausted = data["retry"].get("exhausted", 0)
            if exhausted:
                attention.append(
                    Attention(
                        "warning",
                        f"retry queue: {exhausted} exhausted "
                        f"entr{'y' if exhausted == 1 else 'ies'} no longer retried",
                        "/console/ops/retry-queue?status=exhausted",
                        "Open",
                    )
                )
            failed = data["held"].get("link_failed", 0)
            if failed:
                attention.append(
                    Attention(
                        "critical",
                        f"{failed} asset{'s' if failed != 1 else ''} held as link_failed",
                        "/console/ops/held",
                        "Open",
                    )
                )
        if session.can("reviews:decide"):
            backlog = await db.fetch_one(conn, "console_review_backlog", {"tenant_id": tenant})
            start = now.replace(hour=0, minute=0, second=0, microsecond=0)
            decided = await db.fetch_one(
                conn, "console_reviews_decided_since", {"tenant_id": tenant, "since": start}
            )
            data["reviews"] = (backlog or {}) | {"decided_today": decided["n"] if decided else 0}
            timeout = c.settings.review_timeout
            if backlog and backlog["waiting"]:
                waited = (now - backlog["oldest_at"]).total_seconds()
                if backlog["expired"]:
                    severity = "critical"
                elif waited > timeout / 2:
                    severity = "warning"
                else:
                    severity = "info"
                attention.append(
                    Attention(
                        severity,
                        f"{backlog['waiting']} review{'s' if backlog['waiting'] != 1 else ''} "
                        f"waiting; the oldest for {seconds(waited)} of {seconds(timeout)}"
                        + (f", {backlog['expired']} past due" if backlog["expired"] else ""),
                        "/console/reviews",
                        "Review",
                    )
                )
    attention.sort(key=lambda a: SEVERITY_ORDER.get(a.severity, 9))
    return data


@router.get("/console")
async def overview(request: Request, session: Viewer) -> Response:
    """The overview; it refreshes itself every 10 s."""
    return await render(request, session, "overview.html", await gather(request, session))
