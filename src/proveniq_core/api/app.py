"""The FastAPI application: routes, error envelope, request ids."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from fastapi import FastAPI, Request, Response

from proveniq_core.api import (
    circuits,
    envelope,
    evidence,
    metrics,
    ops,
    reviews,
    routes,
    sim,
    slo,
    webhooks,
)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def create_worker_app(core: Any) -> FastAPI:
    """What a ``--role worker`` process serves: ``/metrics``, ``/healthz`` and ``/readyz``,
    so each worker is a scrape target and a probe like any other process."""
    app = FastAPI(title="Proveniq Core worker", version="0.1.0", openapi_url=None)
    app.state.core = core
    envelope.install(app)
    app.include_router(metrics.router)
    app.include_router(routes.health)
    return app


def create_app(core: Any) -> FastAPI:
    """Build the app around a running ``Core`` (pool, gateway, saga engine)."""
    app = FastAPI(
        title="Proveniq Core",
        version="0.1.0",
        description="Registers physical assets across lockers (MQTT), the ledger and Verify.",
    )
    app.state.core = core
    envelope.install(app)
    metrics.install(app)
    app.include_router(metrics.router)
    app.include_router(routes.router)
    app.include_router(routes.health)
    app.include_router(evidence.router)
    app.include_router(reviews.router)
    app.include_router(sim.router)
    app.include_router(ops.router)
    app.include_router(circuits.router)
    app.include_router(slo.router)
    app.include_router(webhooks.router)

    @app.middleware("http")
    async def request_ids(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        given = request.headers.get("x-request-id", "")
        rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        request.state.request_id = rid
        with structlog.contextvars.bound_contextvars(request_id=rid):
            response = await call_next(request)
        response.headers["X-Request-ID"] = rid
        return response

    return app
