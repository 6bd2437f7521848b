"""What every console page shares: the signed-in session, scopes, CSRF, templates, flash.

A page needs a session (else the browser is sent to sign in) and the scope the matching
API route needs (else a 403 page says which). An action also needs the session's CSRF token,
as the form field ``csrf`` or the header ``X-CSRF-Token``; without it the answer is 403 in
the error envelope, before anything is read or changed.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import quote

import jinja2
from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from proveniq_core import db
from proveniq_core.console import sessions
from proveniq_core.console.sessions import Session
from proveniq_core.errors import ForbiddenError

COOKIE = "proveniq_session"
FLASH_COOKIE = "proveniq_flash"
POLL_HEADER = "x-console-poll"
"""Sent by the pages' background refresh: it reads, but does not count as activity."""

SECURITY_HEADERS = {
    # Nothing but this origin: no CDN, no inline script, no framing.
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

SCOPE_PAGES = {
    "reviews:decide": "the review queue",
    "assets:read": "assets",
    "ops:read": "operations",
    "webhooks:manage": "webhooks",
}


class SignInRequired(Exception):
    """No live session: the browser goes to sign in, then back to ``next_url``."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


class PageForbidden(Exception):
    """The session's key lacks the scope a page needs."""

    def __init__(self, session: Session, scope: str) -> None:
        super().__init__(scope)
        self.session = session
        self.scope = scope


def core(request: Request) -> Any:
    """The running Core of this process."""
    return request.app.state.core


def idle_timeout(request: Request) -> float:
    return float(core(request).settings.console_idle_timeout)


async def current_session(request: Request) -> Session:
    """The request's live session (a dependency); ``SignInRequired`` without one."""
    token = request.cookies.get(COOKIE)
    found = None
    if token:
        touch = request.headers.get(POLL_HEADER) is None
        found = await sessions.load(core(request).pool, token, idle_timeout(request), touch=touch)
    if found is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise SignInRequired(target)
    request.state.principal = found.principal
    return found


Viewer = Annotated[Session, Depends(current_session)]


def need_page(session: Session, scope: str) -> None:
    """A page the key's scopes do not cover is a 403 page naming the scope."""
    if not session.can(scope):
        raise PageForbidden(session, scope)


def need_action(session: Session, scope: str) -> None:
    """The same refusal as the API's: 403 ``E_FORBIDDEN`` in the envelope."""
    if not session.can(scope):
        raise ForbiddenError(f"This API key lacks the scope {scope!r}.")


async def checked_form(request: Request, session: Session, scope: str | None) -> dict[str, str]:
    """An action's form fields, once its CSRF token and scope are checked."""
    form = await request.form()
    token = form.get("csrf") or request.headers.get("x-csrf-token") or ""
    if not isinstance(token, str) or not hmac.compare_digest(
        token.encode(), session.csrf_token.encode()
    ):
        raise ForbiddenError("Missing or invalid CSRF token: reload the page and try again.")
    if scope is not None:
        need_action(session, scope)
    return {k: v for k, v in form.items() if isinstance(v, str)}


# --- formatting --------------------------------------------------------------------------


def _span(seconds: float) -> str:
    s = abs(seconds)
    if s < 45:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    if s < 36 * 3600:
        return f"{s / 3600:.0f} h"
    return f"{s / 86400:.0f} d"


def ago(at: datetime | None, now: datetime | None = None) -> str:
    """Relative to now: "4 min ago", "in 3 h"."""
    if at is None:
        return "—"
    delta = ((now or datetime.now(UTC)) - at).total_seconds()
    if abs(delta) < 2:
        return "just now"
    return f"{_span(delta)} ago" if delta > 0 else f"in {_span(delta)}"


def stamp(at: datetime | None) -> str:
    """The absolute time, for a hover title: "2026-11-29 21:54:45 UTC"."""
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if at else ""


def iso(at: datetime | None) -> str:
    return at.astimezone(UTC).isoformat() if at else ""


def duration(ms: float | None) -> str:
    """A duration for people: "212 ms", "1.4 s", "3 min 5 s"."""
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    return f"{ms // 60_000:.0f} min {(ms % 60_000) / 1000:.0f} s"


def seconds(value: float | None) -> str:
    """Seconds for people: "212 ms", "1.4 s", "19 h"."""
    if value is None:
        return "—"
    if value >= 3600:
        return f"{value / 3600:.0f} h"
    return duration(value * 1000)


def hms(delta: timedelta | float) -> str:
    """A countdown's text: "04:51:10" (or "-00:12:04" past due)."""
    total = delta.total_seconds() if isinstance(delta, timedelta) else delta
    sign, total = ("-" if total < 0 else ""), abs(int(total))
    return f"{sign}{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


def short(value: Any) -> str:
    return str(value)[:8] if value else ""


def metres(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1000:.1f} km" if value >= 10_000 else f"{value:,.0f} m"


def words(code: str | None) -> str:
    """A code for people: "accuracy_acceptable" → "accuracy acceptable"."""
    return (code or "").replace("_", " ")


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("proveniq_core.console", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters |= {
        "ago": ago,
        "stamp": stamp,
        "iso": iso,
        "duration": duration,
        "seconds": seconds,
        "hms": hms,
        "short": short,
        "metres": metres,
        "words": words,
        "urlquote": lambda v: quote(str(v), safe=""),
        "isinf": lambda v: isinstance(v, float) and math.isinf(v),
    }
    return env


ENV = _env()


# --- flash: what an action did, shown once on the page it leads to -------------------------


def _encode_flash(kind: str, text: str, href: str | None) -> str:
    raw = json.dumps({"kind": kind, "text": text, "href": href}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def read_flash(request: Request) -> dict[str, Any] | None:
    value = request.cookies.get(FLASH_COOKIE)
    if not value:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(data, dict) or data.get("kind") not in ("ok", "error", "info"):
        return None
    return {"kind": data["kind"], "text": str(data.get("text", "")), "href": data.get("href")}


def redirect(
    request: Request, url: str, flash: tuple[str, str] | None = None, href: str | None = None
) -> RedirectResponse:
    """303 to ``url`` (after a POST), carrying ``flash`` = (kind, text) to show there once."""
    response = RedirectResponse(url, status_code=303)
    if flash is not None:
        response.set_cookie(
            FLASH_COOKIE,
            _encode_flash(flash[0], flash[1], href),
            max_age=60,
            path="/console",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
    return response


async def nav_counts(request: Request, session: Session) -> dict[str, Any]:
    """The header's badge: how many reviews wait (reviewers only)."""
    if not session.can("reviews:decide"):
        return {"reviews": None}
    async with db.connection(core(request).pool) as conn:
        row = await db.fetch_one(
            conn, "console_review_backlog", {"tenant_id": session.principal.tenant_id}
        )
    return {"reviews": row["waiting"] if row else 0}


async def render(
    request: Request,
    session: Session | None,
    template: str,
    context: Mapping[str, Any] | None = None,
    *,
    status: int = 200,
    section: str = "",
) -> HTMLResponse:
    """A page: the template inside the layout, with the session, nav and flash."""
    flash = read_flash(request)
    page = ENV.get_template(template).render(
        {
            "session": session,
            "csrf": session.csrf_token if session else "",
            "nav": await nav_counts(request, session) if session else {"reviews": None},
            "section": section,
            "flash": flash,
            "now": datetime.now(UTC),
            "path": request.url.path,
            **(context or {}),
        }
    )
    response = HTMLResponse(page, status_code=status, headers=SECURITY_HEADERS)
    if flash is not None:
        response.delete_cookie(FLASH_COOKIE, path="/console")
    return response


def safe_next(url: str | None) -> str:
    """Where to go after signing in: a console path only (no open redirect)."""
    if url and url.startswith("/console") and not url.startswith("//") and "\\" not in url:
        return url
    return "/console"


def error_page(request: Request, session: Session, scope: str) -> Response:
    """The 403 page of a page whose scope the key lacks (rendered synchronously: no nav)."""
    page = ENV.get_template("forbidden.html").render(
        {
            "session": session,
            "csrf": session.csrf_token,
            "nav": {"reviews": None},
            "section": "",
            "flash": None,
            "now": datetime.now(UTC),
            "path": request.url.path,
            "scope": scope,
            "what": SCOPE_PAGES.get(scope, "this page"),
        }
    )
    return HTMLResponse(page, status_code=403, headers=SECURITY_HEADERS)
