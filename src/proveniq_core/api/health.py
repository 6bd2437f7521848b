"""Liveness and readiness: served by every process, workers included."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from proveniq_core import db
from proveniq_core.api.deps import CoreDep
from proveniq_core.api.models import Readiness
from proveniq_core.errors import CoreError, LedgerSaturatedError
from proveniq_core.resilience.circuits import LEDGER_CIRCUIT

router = APIRouter(tags=["health"])

READY_WAIT_S = 2.0
"""How long ``/readyz`` waits for a database connection: a probe answers in bounded time."""


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "database down or migrations pending"}},
)
async def readyz(core: CoreDep) -> JSONResponse:
    """Ready when the database answers and migrations are current; the broker may be degraded.

    200 ``ready``: everything up; 200 ``degraded``: serving, but the broker is down, a
    circuit is not closed (lockers answer later: links are deferred) or, in a ``serve
    --workers N`` process, not all of its worker processes are up (verification and the
    other background work wait for them; registrations are still taken); 503 ``unready``:
    the database is unreachable (or its circuit open) or migrations are pending.

    The check waits at most ``READY_WAIT_S`` for a connection. If every connection stayed
    busy meanwhile while others were handed out, the database is answering but this process
    is saturated: ``database: busy``, 200 ``degraded``. If nobody got one, it is ``down``.
    """
    checks: dict[str, str] = {}
    asked = time.monotonic()
    try:
        async with asyncio.timeout(READY_WAIT_S):
            async with db.connection(core.pool) as conn:
                await conn.execute("SELECT 1")
                pending = await db.pending_migrations(conn)
        checks["database"] = "ok"
        checks["migrations"] = "ok" if not pending else f"pending: {pending}"
    except (TimeoutError, LedgerSaturatedError):
        checks["database"] = "busy" if db.handed_out_since(core.pool, asked) else "down"
        checks["migrations"] = "unknown"
    except CoreError:
        checks["database"] = "down"
        checks["migrations"] = "unknown"
    checks["broker"] = "ok" if core.gateway.connected else "degraded"
    circuits = {s["name"]: s["state"] for s in core.breakers.snapshots()}
    checks["ledgerCircuit"] = circuits.get(LEDGER_CIRCUIT, "closed")
    if core.worker_processes is not None:
        up, started = core.worker_processes()
        checks["workers"] = "ok" if up == started else f"{up}/{started} up"
    not_closed = sorted(name for name, state in circuits.items() if state != "closed")
    busy = checks["database"] == "busy"
    ready = busy or (checks["database"] == "ok" and checks["migrations"] == "ok")
    healthy = (
        not busy
        and checks["broker"] == "ok"
        and checks.get("workers", "ok") == "ok"
        and not not_closed
    )
    status = "ready" if ready and healthy else ("degraded" if ready else "unready")
    return JSONResponse(
        {"status": status, "checks": checks, "openCircuits": not_closed},
        status_code=200 if ready else 503,
    )
