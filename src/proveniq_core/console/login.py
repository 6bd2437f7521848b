"""Signing in with an API key, and out."""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from proveniq_core.console import sessions
from proveniq_core.console.web import (
    COOKIE,
    SignInRequired,
    Viewer,
    checked_form,
    core,
    current_session,
    idle_timeout,
    redirect,
    render,
    safe_next,
)
from proveniq_core.errors import CoreError, ForbiddenError
from proveniq_core.ledger import keys

router = APIRouter(include_in_schema=False)

LOGIN_COOKIE = "proveniq_login"
"""The sign-in form's CSRF token (double-submit: cookie and field must match)."""


async def _login_page(
    request: Request, next_url: str, error: str | None = None, status: int = 200
) -> Response:
    token = secrets.token_urlsafe(24)
    response = await render(
        request,
        None,
        "login.html",
        {"next": safe_next(next_url), "login_token": token, "error": error},
        status=status,
    )
    response.set_cookie(
        LOGIN_COOKIE,
        token,
        max_age=3600,
        path="/console/login",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.get("/console/login")
async def login_form(request: Request, next: str = "/console") -> Response:
    """The sign-in page (straight to the console when already signed in)."""
    try:
        await current_session(request)
    except (SignInRequired, CoreError):  # no live session, or the ledger cannot say
        return await _login_page(request, next)
    return redirect(request, safe_next(next))


@router.post("/console/login")
async def login(
    request: Request,
    key: Annotated[str, Form(max_length=200)] = "",
    csrf: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/console",
) -> Response:
    """Sign in with an API key: a server-side session, its token in an HttpOnly cookie."""
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not csrf or not expected or not hmac.compare_digest(csrf.encode(), expected.encode()):
        raise ForbiddenError("Missing or invalid CSRF token: reload the page and try again.")
    c = core(request)
    principal = await keys.authenticate(c.pool, key.strip(), c.key_cache) if key.strip() else None
    if principal is None:
        return await _login_page(
            request, next, "That key is not valid (or has been revoked).", status=401
        )
    token, _ = await sessions.open_session(c.pool, principal, idle_timeout(request))
    response = redirect(request, safe_next(next))
    response.set_cookie(
        COOKIE,
        token,
        path="/console",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    response.delete_cookie(LOGIN_COOKIE, path="/console/login")
    return response


@router.post("/console/logout")
async def logout(request: Request, session: Viewer) -> Response:
    """Sign out: the session is deleted and its cookie cleared."""
    await checked_form(request, session, None)
    await sessions.close(core(request).pool, session)
    response = redirect(request, "/console/login", ("info", "Signed out."))
    response.delete_cookie(COOKIE, path="/console")
    return response
