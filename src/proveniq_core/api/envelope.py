"""The one error envelope (DESIGN.md §3) and the handlers that produce it.

An unexpected exception becomes a 500 envelope in ``CatchUnexpected``, inside the request-id
middleware, so that it carries ``X-Request-ID`` like every other answer and the server keeps
the connection open (an exception escaping the app makes uvicorn close it).
"""

from __future__ import annotations

import math
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proveniq_core.errors import TAXONOMY, CoreError, RequestError

log = structlog.get_logger(__name__)

_HTTP_CODES = {401: "E_UNAUTHORIZED", 403: "E_FORBIDDEN", 404: "E_NOT_FOUND", 409: "E_CONFLICT"}


def request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", ""))


def envelope(
    request: Request,
    code: str,
    *,
    message: str | None = None,
    status: int | None = None,
    asset_id: str | None = None,
    details: Any = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    mode = TAXONOMY[code]
    body: dict[str, Any] = {
        "code": code,
        "message": message or mode.user_message,
        "severity": mode.severity,
        "retryable": mode.retryable,
        "requestId": request_id(request),
    }
    if asset_id:
        body["assetId"] = asset_id
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status or mode.http_status, headers=headers)


def error_status(exc: CoreError) -> int:
    """The HTTP status of an error; a code whose taxonomy answer is 2xx is a 503 here."""
    status = exc.mode.http_status
    return status if status >= 400 else 503


def retry_after(exc: CoreError) -> dict[str, str] | None:
    """``Retry-After`` in whole seconds (at least 1) when the error knows when, or is a 503."""
    if exc.retry_after is None and error_status(exc) != 503:
        return None
    return {"Retry-After": str(max(1, math.ceil(exc.retry_after or 0)))}


def error_response(request: Request, exc: CoreError) -> JSONResponse:
    """The response the app answers when a route raises ``exc`` (stored by idempotency).

    A refused request says what was wrong with it; a subsystem failure answers the
    taxonomy's user message, with what happened (for operators) as ``details.detail``.
    """
    message, details = exc.message, exc.details
    if not isinstance(exc, RequestError) and message != exc.mode.user_message:
        details = {**(details if isinstance(details, dict) else {}), "detail": message}
        message = exc.mode.user_message
    return envelope(
        request,
        exc.code,
        message=message,
        status=error_status(exc),
        asset_id=exc.asset_id,
        details=details,
        headers=retry_after(exc),
    )


class CatchUnexpected:
    """Plain ASGI middleware: an exception no handler answered becomes the 500 envelope,
    logged here and not raised further, unless the response had already started."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            if started:
                raise  # too late for an envelope: the server ends the response
            request = Request(scope)
            log.exception("unhandled_error", request_id=request_id(request))
            await envelope(request, "E_INTERNAL")(scope, receive, send)


def install(app: FastAPI) -> None:
    """The error handlers, and ``CatchUnexpected`` as the innermost middleware (call this
    before adding the request-id middleware)."""
    app.add_middleware(CatchUnexpected)

    @app.exception_handler(CoreError)
    async def core_error(request: Request, exc: CoreError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {
                "field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"),
                "problem": e.get("msg", ""),
                "type": e.get("type", ""),
            }
            for e in exc.errors()
        ]
        summary = "; ".join(f"{p['field'] or 'body'}: {p['problem']}" for p in problems[:5])
        return envelope(
            request, "E_VALIDATION", message=f"Invalid request: {summary}", details=problems
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI's answer to a body it cannot decode (not UTF-8): the same 422 as a body
            # that is not JSON, which every route with a body declares.
            problem = {"field": "", "problem": str(exc.detail), "type": "json_invalid"}
            message = f"Invalid request: body: {exc.detail}"
            return envelope(request, "E_VALIDATION", message=message, details=[problem])
        code = _HTTP_CODES.get(exc.status_code, "E_VALIDATION")
        return envelope(request, code, message=str(exc.detail), status=exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Only what escapes the middleware itself reaches this (Starlette's outermost layer).
        log.exception("unhandled_error", request_id=request_id(request))
        return envelope(request, "E_INTERNAL")
