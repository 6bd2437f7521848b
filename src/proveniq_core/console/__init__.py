"""The console (docs/console.md): server-rendered pages for reviewers and operators at
``/console``, served by the API process, with nothing loaded from another host.

It is the API's client: each action it offers is an HTTP API route first and runs the same
function under the signed-in key's name and scopes.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from proveniq_core.api import envelope
from proveniq_core.console import assets, docs, login, operations, overview, reviews
from proveniq_core.console.web import (
    ENV,
    POLL_HEADER,
    SECURITY_HEADERS,
    PageForbidden,
    SignInRequired,
    error_page,
)
from proveniq_core.errors import CoreError, UnauthorizedError


def _is_page(request: Request) -> bool:
    """A console page a person navigated to (not an action, a fetch or a photo)."""
    path = request.url.path
    return (
        path.startswith("/console")
        and request.method == "GET"
        and POLL_HEADER not in request.headers
        and "/photo/" not in path
    )


def install(app: FastAPI) -> None:
    """Mount the console, its static files and the offline ``/docs`` and ``/redoc``."""
    app.mount(
        "/console/static",
        StaticFiles(packages=[("proveniq_core.console", "static")]),
        name="console-static",
    )
    for module in (login, overview, reviews, assets, operations):
        app.include_router(module.router)
    docs.install(app)

    @app.exception_handler(SignInRequired)
    async def sign_in(request: Request, exc: SignInRequired) -> Response:
        if request.method == "GET" and POLL_HEADER not in request.headers:
            return RedirectResponse(f"/console/login?next={exc.next_url}", status_code=303)
        if "x-csrf-token" not in request.headers and request.method == "POST":
            return RedirectResponse("/console/login", status_code=303)  # a form: sign in again
        return envelope.error_response(request, UnauthorizedError("Signed out: sign in again."))

    @app.exception_handler(PageForbidden)
    async def forbidden(request: Request, exc: PageForbidden) -> Response:
        return error_page(request, exc.session, exc.scope)

    @app.exception_handler(CoreError)
    async def core_error(request: Request, exc: CoreError) -> Response:
        if not _is_page(request):
            return envelope.error_response(request, exc)
        status = envelope.error_status(exc)
        page = ENV.get_template("error.html").render(
            {
                "session": None,
                "csrf": "",
                "nav": {"reviews": None},
                "section": "",
                "flash": None,
                "now": datetime.now(UTC),
                "path": request.url.path,
                "status": status,
                "code": exc.code,
                "message": exc.message,
                "request_id": envelope.request_id(request),
            }
        )
        return HTMLResponse(page, status_code=status, headers=SECURITY_HEADERS)


__all__ = ["install"]
