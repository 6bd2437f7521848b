"""The FastAPI application: routes, error envelope, request ids."""

from __future__ import annotations

from fastapi import FastAPI

from proveniq_core import console
from proveniq_core.api import (
    alert_actions,
    alerts,
    assets,
    circuits,
    envelope,
    evidence,
    health,
    lockers,
    metrics,
    ops,
    reviews,
    sagas,
    sim,
    slo,
    webhooks,
)
from proveniq_core.service import Core


def create_worker_app(core: Core) -> FastAPI:
    """What a ``--role worker`` process serves: ``/metrics``, ``/healthz`` and ``/readyz``,
    so each worker is a scrape target and a probe like any other process."""
    app = FastAPI(title="Proveniq Core worker", version="0.1.0", openapi_url=None)
    app.state.core = core
    envelope.install(app)
    app.include_router(metrics.router)
    app.include_router(health.router)
    return app


def create_app(core: Core | None) -> FastAPI:
    """Build the app around a running ``Core`` (pool, gateway, saga engine); with ``None``,
    the routes and models alone, for the OpenAPI document."""
    app = FastAPI(
        title="Proveniq Core",
        version="0.1.0",
        description="Registers physical assets across lockers (MQTT), the ledger and Verify.",
        docs_url=None,  # served by the console with local assets: works offline
        redoc_url=None,
    )
    app.state.core = core
    envelope.install(app)
    app.add_middleware(metrics.RequestContext)
    app.include_router(metrics.router)
    app.include_router(assets.router)
    app.include_router(lockers.router)
    app.include_router(sagas.router)
    app.include_router(alerts.router)
    app.include_router(health.router)
    app.include_router(evidence.router)
    app.include_router(reviews.router)
    app.include_router(sim.router)
    app.include_router(ops.router)
    app.include_router(circuits.router)
    app.include_router(slo.router)
    app.include_router(webhooks.router)
    app.include_router(alert_actions.router)
    console.install(app)

    return app
