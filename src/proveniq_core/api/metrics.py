"""``GET /metrics`` (Prometheus text format, unauthenticated) and the HTTP request metrics.

Each request is observed as ``subsystem="api"``, ``operation="<METHOD> <route template>"``
(``POST /api/assets``, ``GET /api/assets/{asset_id}``; ``unmatched`` for no route) and
``status`` = the response's status code: every label bounded, whatever the client sends.
The same middleware writes the access log: one ``http_request`` line per request (method,
route template, status, duration_ms; request_id comes from the bound context).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import structlog
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proveniq_core.observability import metrics
from proveniq_core.observability.gauges import ScrapeGauges

log = structlog.get_logger(__name__)

router = APIRouter(tags=["health"])

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"description": "Prometheus text exposition format"}},
)
async def prometheus_metrics(request: Request) -> Response:
    """This process's metrics, with circuit states and the retry-queue depth read now."""
    state = request.app.state
    if state.core is not None:
        if not hasattr(state, "scrape_gauges"):
            state.scrape_gauges = ScrapeGauges(state.core.breakers, state.core.pool)
        await state.scrape_gauges.refresh()
    return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)


def operation(request: Request) -> str:
    """``"<METHOD> <route template>"``, or ``"unmatched"`` when no route took the request."""
    path = getattr(request.scope.get("route"), "path", None)
    if not isinstance(path, str):
        return "unmatched"
    return f"{request.method if request.method in _METHODS else 'OTHER'} {path}"


def install(app: FastAPI) -> None:
    """Observe every request's latency and status code, and log it."""

    @app.middleware("http")
    async def observe_requests(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        status = "500"  # what the client gets if an exception escapes the app
        try:
            response = await call_next(request)
            status = str(response.status_code)
            return response
        finally:
            seconds = time.perf_counter() - started
            metrics.observe("api", operation(request), status, seconds)
            route = getattr(request.scope.get("route"), "path", None)
            log.info(
                "http_request",
                method=request.method,
                route=route if isinstance(route, str) else "unmatched",
                status=int(status),
                duration_ms=round(seconds * 1000, 1),
            )
