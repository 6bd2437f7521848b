"""The console over HTTP, in process (docs/console.md): sign-in and its session, CSRF, scopes
on pages and actions, and every page answering for a key that may see it. The browser tests
(tests/browser) drive the same pages in Chromium."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import psycopg

from proveniq_core.api.app import create_app
from proveniq_core.ledger import keys
from proveniq_core.service import Core
from tests.integration.conftest import TENANT, first_ref
from tests.integration.test_ops_actions import exhausted_entry
from tests.integration.test_ops_api import inject
from tests.integration.test_reviews import open_review

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@asynccontextmanager
async def browser(
    core: Core, base_url: str = "http://core.test"
) -> AsyncIterator[httpx.AsyncClient]:
    """A cookie-keeping client on the app, like a browser without JavaScript."""
    transport = httpx.ASGITransport(app=create_app(core))
    async with httpx.AsyncClient(transport=transport, base_url=base_url) as http:
        yield http


async def sign_in(http: httpx.AsyncClient, key: str, next_url: str = "/console") -> httpx.Response:
    page = await http.get("/console/login")
    token = CSRF.search(page.text)
    assert token is not None, page.text
    return await http.post(
        "/console/login", data={"key": key, "csrf": token.group(1), "next": next_url}
    )


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found is not None
    return found.group(1)


async def named_key(core: Core, name: str, scopes: list[str] | tuple[str, ...]) -> str:
    return await keys.create_key(core.pool, TENANT, scopes, name=name)


async def test_sign_in_opens_a_session_with_a_strict_http_only_cookie(core: Core) -> None:
    """A good key: 303 to where it was going, the cookie HttpOnly and SameSite=Strict (not
    Secure over HTTP); the overview greets the key's name. A bad key: 401 and no cookie."""
    key = await named_key(core, "Ana Lima", keys.SCOPES)
    async with browser(core) as http:
        bad = await sign_in(http, "pk_nope_nothing")
        assert bad.status_code == 401
        assert "not valid" in bad.text and "proveniq_session" not in bad.headers.get(
            "set-cookie", ""
        )
        signed = await sign_in(http, key, "/console/assets")
        assert signed.status_code == 303 and signed.headers["location"] == "/console/assets"
        cookie = next(
            c for c in signed.headers.get_list("set-cookie") if c.startswith("proveniq_session=")
        )
        flags = cookie.lower()
        assert "httponly" in flags and "samesite=strict" in flags and "path=/console" in flags
        assert "secure" not in flags
        page = await http.get("/console")
        assert page.status_code == 200
        assert "Ana Lima" in page.text
        assert page.headers["content-security-policy"].startswith("default-src 'self'")


async def test_the_cookie_is_secure_over_https(core: Core) -> None:
    """Signed in over HTTPS, the session cookie is Secure."""
    key = await named_key(core, "Ana Lima", keys.SCOPES)
    async with browser(core, "https://core.test") as http:
        signed = await sign_in(http, key)
        cookie = next(
            c for c in signed.headers.get_list("set-cookie") if c.startswith("proveniq_session=")
        )
        assert "secure" in cookie.lower()


async def test_pages_need_a_session_and_the_login_form_its_token(core: Core) -> None:
    """Signed out: a page redirects to sign in (coming back after); a sign-in post without
    the form's token is 403 in the envelope; a next URL off the console is ignored."""
    key = await named_key(core, "Ana Lima", keys.SCOPES)
    async with browser(core) as http:
        away = await http.get("/console/reviews")
        assert away.status_code == 303
        assert away.headers["location"] == "/console/login?next=/console/reviews"
        refused = await http.post("/console/login", data={"key": key})
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "E_FORBIDDEN"
        elsewhere = await sign_in(http, key, "https://example.org/")
        assert elsewhere.headers["location"] == "/console"


async def test_an_action_without_its_csrf_token_is_refused(
    core: Core, client: httpx.AsyncClient
) -> None:
    """A decision posted without (or with a wrong) CSRF token: 403 in the envelope, and the
    review stays undecided."""
    review = await open_review(core, client)
    key = await named_key(core, "Ana Lima", ["reviews:decide"])
    async with browser(core) as http:
        await sign_in(http, key)
        path = f"/console/reviews/{review['reviewId']}/decide"
        for data in ({"decision": "approve"}, {"decision": "approve", "csrf": "forged"}):
            refused = await http.post(path, data=data)
            assert refused.status_code == 403
            error = refused.json()["error"]
            assert error["code"] == "E_FORBIDDEN" and "CSRF" in error["message"]
    assert (await client.get(f"/api/reviews/{review['reviewId']}")).json()["status"] == "pending"


async def test_a_key_without_reviews_decide_sees_no_review_queue(
    core: Core, client: httpx.AsyncClient
) -> None:
    """An operator's key: no Reviews in the header, the queue and an item are 403 pages
    naming the scope, and a decision posted anyway is 403 in the envelope."""
    review = await open_review(core, client)
    key = await named_key(core, "Olu Operator", ["ops:read", "ops:write", "assets:read"])
    async with browser(core) as http:
        await sign_in(http, key)
        home = await http.get("/console")
        assert 'href="/console/reviews"' not in home.text
        for path in ("/console/reviews", f"/console/reviews/{review['reviewId']}"):
            page = await http.get(path)
            assert page.status_code == 403
            assert "reviews:decide" in page.text
        posted = await http.post(
            f"/console/reviews/{review['reviewId']}/decide",
            data={"decision": "approve", "csrf": csrf_of(home.text)},
        )
        assert posted.status_code == 403
        assert posted.json()["error"]["code"] == "E_FORBIDDEN"


async def test_idle_revoked_and_signed_out_sessions_end(core: Core, database_url: str) -> None:
    """A session idle past the timeout, one whose key is revoked, and one signed out all
    send the browser back to sign in."""
    async with browser(core) as http:
        key = await named_key(core, "Ana Lima", keys.SCOPES)
        await sign_in(http, key)
        assert (await http.get("/console")).status_code == 200
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            await conn.execute(
                "UPDATE console_sessions SET last_seen_at = now() - interval '31 minutes'"
            )
        assert (await http.get("/console")).status_code == 303

        await sign_in(http, key)
        assert (await http.get("/console")).status_code == 200
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE name = 'Ana Lima'")
        assert (await http.get("/console")).status_code == 303

        other = await named_key(core, "Ben Okafor", keys.SCOPES)
        await sign_in(http, other)
        home = await http.get("/console")
        out = await http.post("/console/logout", data={"csrf": csrf_of(home.text)})
        assert out.status_code == 303 and out.headers["location"] == "/console/login"
        assert (await http.get("/console")).status_code == 303


async def test_a_background_refresh_does_not_keep_a_session_alive(
    core: Core, database_url: str
) -> None:
    """Polling with X-Console-Poll reads the page but does not count as activity."""
    key = await named_key(core, "Ana Lima", keys.SCOPES)
    async with browser(core) as http:
        await sign_in(http, key)
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            await conn.execute(
                "UPDATE console_sessions SET last_seen_at = now() - interval '20 minutes'"
            )
            polled = await http.get("/console", headers={"X-Console-Poll": "1"})
            assert polled.status_code == 200
            row = await (
                await conn.execute(
                    "SELECT now() - last_seen_at > interval '19 minutes' FROM console_sessions"
                )
            ).fetchone()
            assert row is not None and row[0] is True


async def test_every_page_answers_for_an_admin(core: Core, client: httpx.AsyncClient) -> None:
    """Overview, reviews, a review item, assets, an asset, and each operations page render
    with the data a failure path leaves (a review, an exhausted entry, an alert)."""
    review = await open_review(core, client)
    ref = first_ref(core)
    await inject(client, lockerRef=ref, fault="hardware_fault")
    entry = await exhausted_entry(core, client, ref)
    saga_id = (await client.get(f"/api/assets/{entry['assetId']}")).json()["sagaId"]
    key = await named_key(core, "Ana Lima", keys.SCOPES)
    async with browser(core) as http:
        await sign_in(http, key)
        pages: dict[str, tuple[str, ...]] = {
            "/console": ("Needs attention", "held as link_failed", "SLO"),
            "/console/reviews": ("Review queue", ref),
            f"/console/reviews/{review['reviewId']}": ("held by you", "GPS fix", "Approve"),
            "/console/assets": ("Assets",),
            f"/console/assets?q={ref}": (entry["assetId"][:8],),
            f"/console/assets/{review['assetId']}": ("State history", "Audit trail", "Saga"),
            f"/console/assets/{entry['assetId']}": ("Retry link now", "E_LOCKER_HARDWARE"),
            "/console/ops/retry-queue?status=exhausted": ("Retry all exhausted (1)",),
            "/console/ops/held": ("link failed",),
            "/console/ops/sagas": ("asset registration",),
            f"/console/ops/sagas/{saga_id}": ("link_locker",),
            "/console/ops/circuits": ("Circuits",),
            "/console/ops/lockers": (ref,),
            "/console/ops/alerts": ("E_LOCKER_HARDWARE", "Acknowledge"),
            "/console/ops/webhooks": ("Webhook subscriptions",),
        }
        for path, expected in pages.items():
            page = await http.get(path)
            assert page.status_code == 200, (path, page.text[-2000:])
            for text in expected:
                assert text in page.text, (path, text)
        missing = await http.get("/console/assets/00000000-0000-0000-0000-000000000000")
        assert missing.status_code == 404 and "Not found" in missing.text
        photo = review["evidence"][0]["sha256"]
        img = await http.get(f"/console/reviews/{review['reviewId']}/photo/{photo}")
        assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"


async def test_docs_and_redoc_load_their_assets_from_this_process(core: Core) -> None:
    """/docs and /redoc reference only local scripts and styles, which are served."""
    async with browser(core) as http:
        for path in ("/docs", "/redoc"):
            html = (await http.get(path)).text
            urls: list[Any] = re.findall(r'(?:src|href)="([^"]+)"', html)
            assert urls, path
            for url in urls:
                assert url.startswith("/"), (path, url)
                assert (await http.get(url)).status_code == 200, url
            assert "https://" not in html and "http://" not in html, path
