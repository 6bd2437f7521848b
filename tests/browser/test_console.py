"""The console in Chromium against a real ``proveniq serve``: sign-in, a reviewer clearing a
queue with the keyboard only, claims across two browsers, an operator's retry and discard,
scopes, CSRF, and pages that load nothing from another host. Screenshots at 1280x800 go to
a temporary directory (docs/ holds reviewed copies)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import BrowserContext

from proveniq_core import db
from proveniq_core.ledger import outbox
from tests.browser.conftest import Stack, Tenant, eventually, sign_in

NewContext = Callable[[], Awaitable[BrowserContext]]
REVIEWER = ("reviews:decide",)
OPERATOR = ("ops:read", "ops:write", "assets:read")


async def asset_status(http: httpx.AsyncClient, asset_id: str) -> str:
    return str((await http.get(f"/api/assets/{asset_id}")).json()["status"])


async def manual_reviews(t: Tenant, names: list[str]) -> list[str]:
    """Register assets whose evidence needs a person (a GPS fix too imprecise to place);
    return their ids once each waits in the review queue."""
    ref = t.refs[0]
    await t.stack.fault(lockerRef=ref, fault="bad_evidence", defect="low_accuracy")
    ids = []
    async with t.api() as http:
        for name in names:
            body = {"name": name, "category": "watch", "lockerRef": ref}
            created = await http.post("/api/assets", json=body)
            assert created.status_code == 201, created.text
            ids.append(created.json()["assetId"])
        for asset_id in ids:

            async def waiting(asset_id: str = asset_id) -> bool:
                return await asset_status(http, asset_id) == "manual_review"

            await eventually(waiting, f"{asset_id} in manual_review")
    await t.stack.clear_faults(ref)
    return ids


async def exhausted_entries(t: Tenant, names: list[str]) -> list[dict[str, Any]]:
    """Assets whose links a hardware fault refused, then an operator's retry-link too:
    each holds an exhausted retry-queue entry. The fault is cleared afterwards."""
    ref = t.refs[1]
    await t.stack.fault(lockerRef=ref, fault="hardware_fault")
    entries = []
    async with t.api() as http:
        for name in names:
            body = {"name": name, "category": "equipment", "lockerRef": ref}
            refused = await http.post("/api/assets", json=body)
            assert refused.status_code == 502, refused.text
            asset_id = refused.json()["error"]["assetId"]
            again = await http.post(f"/api/ops/assets/{asset_id}/retry-link")
            assert again.json()["retryEntry"]["status"] == "exhausted", again.text
            entries.append(again.json()["retryEntry"])
    await t.stack.clear_faults(ref)
    return entries


async def test_sign_in_opens_a_session_and_sign_out_ends_it(
    stack: Stack, new_context: NewContext
) -> None:
    """A deep link sends a signed-out person to sign in and back; the cookie is HttpOnly and
    SameSite=Strict; the header names the key's person; signing out ends it."""
    t = await stack.tenant()
    key = await t.key("Ana Lima", ("reviews:decide", "assets:read"))
    page = await (await new_context()).new_page()
    await sign_in(page, stack.url, key, "/console/assets")
    assert page.url.endswith("/console/assets")
    assert await page.locator("header .name").inner_text() == "Ana Lima"
    [cookie] = [c for c in await page.context.cookies() if c["name"] == "proveniq_session"]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/console"

    async with page.expect_navigation():
        await page.get_by_role("button", name="Sign out").click()
    assert "/console/login" in page.url
    assert "Signed out." in await page.content()
    await page.goto(f"{stack.url}/console")
    assert "/console/login" in page.url


async def test_a_reviewer_clears_the_queue_with_the_keyboard_only(
    stack: Stack, new_context: NewContext
) -> None:
    """Three manual_review items, decided approve, reject (with a note), approve using keys
    alone: each decision costs its keys and one page load; the API then shows the three
    decisions under the reviewer's name, and the assets and verifications follow them."""
    t = await stack.tenant()
    ids = await manual_reviews(t, ["Omega Speedmaster 3861", "Rolex Datejust 1601", "Tudor 79030"])
    key = await t.key("Ana Lima", REVIEWER)
    page = await (await new_context()).new_page()
    loads: list[str] = []
    page.on(
        "framenavigated",
        lambda frame: loads.append(frame.url) if frame == page.main_frame else None,
    )
    await sign_in(page, stack.url, key, "/console/reviews")
    assert await page.locator("tbody tr").count() == 3

    async with page.expect_navigation():
        await page.keyboard.press("Enter")  # the first item by deadline is selected
    assert "Review 1 of 3" in await page.locator(".reviewbar").inner_text()
    assert "held by you" in await page.locator(".reviewbar").inner_text()

    keystrokes: list[int] = []
    for decision, note in (("a", ""), ("r", "Not the watch registered: wrong dial"), ("a", "")):
        before = len(loads)
        await page.keyboard.press(decision)
        if note:
            await page.keyboard.type(note)
        async with page.expect_navigation():
            await page.keyboard.press("Enter")
        keystrokes.append(2 + len(note))
        assert len(loads) - before == 1, loads[before:]  # one page load per decision
        assert "Decisions are final" in await page.locator(".flash").inner_text()
    assert page.url.endswith("/console/reviews")
    assert await page.locator(".empty").inner_text() == (
        "Nothing to review. New items appear here as Verify flags them."
    )
    assert keystrokes == [2, 2 + 36, 2]

    async with t.api() as http:
        approved = (await http.get("/api/reviews", params={"status": "approved"})).json()["items"]
        rejected = (await http.get("/api/reviews", params={"status": "rejected"})).json()["items"]
        assert sorted(r["assetId"] for r in approved + rejected) == sorted(ids)
        assert [r["decidedBy"] for r in approved + rejected] == ["Ana Lima"] * 3
        assert len(approved) == 2 and rejected[0]["note"] == "Not the watch registered: wrong dial"
        assert approved[0]["reason"] == "accuracy_acceptable"
        assert rejected[0]["reason"] == "outside_site"
        for review in approved + rejected:
            asset = (await http.get(f"/api/assets/{review['assetId']}")).json()
            outcome = "verified" if review["status"] == "approved" else "rejected"
            assert (asset["status"], asset["verification"]["status"]) == (outcome, outcome)


async def test_two_browsers_cannot_claim_the_same_item(
    stack: Stack, new_context: NewContext
) -> None:
    """Ana opens the item and holds it; Ben sees who holds it and cannot decide (nor claim
    it over the API); once Ana leaves with Esc her claim is released and Ben gets it."""
    t = await stack.tenant()
    [asset_id] = await manual_reviews(t, ["Cartier Tank Must"])
    ana_key, ben_key = await t.key("Ana Lima", REVIEWER), await t.key("Ben Okafor", REVIEWER)
    ana = await (await new_context()).new_page()
    ben = await (await new_context()).new_page()
    await sign_in(ana, stack.url, ana_key, "/console/reviews/next")
    assert "held by you" in await ana.locator(".reviewbar").inner_text()
    review_url = ana.url

    await sign_in(ben, stack.url, ben_key)
    await ben.goto(review_url)
    assert "Held by Ana Lima" in await ben.locator(".held").inner_text()
    assert await ben.locator("button.approve").is_disabled()
    await ben.keyboard.press("a")
    assert await ben.locator("#decision").get_attribute("data-armed") is None
    review_id = review_url.rsplit("/", 1)[1]
    async with t.api(ben_key) as http:
        taken = await http.post(f"/api/reviews/{review_id}/claim")
        assert taken.status_code == 409
        assert taken.json()["error"]["details"][0]["heldBy"] == "Ana Lima"

    async with ana.expect_navigation():
        await ana.keyboard.press("Escape")  # back to the queue: the page releases its claim

    async def ben_holds_it() -> bool:
        await ben.goto(review_url)
        return "held by you" in await ben.locator(".reviewbar").inner_text()

    await eventually(ben_holds_it, "Ben's claim after Ana left")
    async with t.api() as http:
        assert await asset_status(http, asset_id) == "manual_review"


async def test_an_operator_retries_one_entry_and_discards_another(
    stack: Stack, new_context: NewContext
) -> None:
    """Two exhausted entries: "Retry now" links the first (entry resolved); "Discard…" with
    a reason stops the second; both recorded under the operator's name, the reason too."""
    t = await stack.tenant()
    first, second = await exhausted_entries(t, ["Hilti TE 70 drill", "Fluke 87V meter"])
    key = await t.key("Olu Operator", OPERATOR)
    page = await (await new_context()).new_page()
    await sign_in(page, stack.url, key, "/console/ops/retry-queue?status=exhausted")
    assert "Retry all exhausted (2)" in await page.content()

    row = page.locator(f'tr[data-entry="{first["id"]}"]')
    async with page.expect_navigation():
        await row.get_by_role("button", name="Retry now").click()
    flash = await page.locator(".flash").inner_text()
    assert f"Retried entry {first['id'][:8]}" in flash and "the entry is resolved" in flash

    row = page.locator(f'tr[data-entry="{second["id"]}"]')
    await row.locator("summary", has_text="Discard").click()
    await row.get_by_label("Why").fill("registered twice by the front desk")
    async with page.expect_navigation():
        await row.locator("form button", has_text="Discard").click()
    assert "Discarded entry" in await page.locator(".flash").inner_text()

    async with t.api() as http:
        done = (await http.get(f"/api/ops/retry-queue/{first['id']}")).json()
        assert done["status"] == "resolved"
        assert await asset_status(http, first["assetId"]) in ("linked", "verified")
        stopped = (await http.get(f"/api/ops/retry-queue/{second['id']}")).json()
        assert stopped["status"] == "discarded"
        assert await asset_status(http, second["assetId"]) == "link_failed"
    async with db.connection(stack.pool) as conn:
        trail = await db.fetch_all(
            conn, "audit_for_entity", {"entity_type": "retry_entry", "entity_id": second["id"]}
        )
    assert (trail[-1]["actor"], trail[-1]["after"]["reason"]) == (
        "Olu Operator",
        "registered twice by the front desk",
    )


async def test_retry_all_exhausted_shows_the_count_and_asks_once(
    stack: Stack, new_context: NewContext
) -> None:
    """The bulk action names its count, asks once, and says what it did."""
    t = await stack.tenant()
    entries = await exhausted_entries(t, ["Makita saw", "Bosch level"])
    page = await (await new_context()).new_page()
    await sign_in(
        page, stack.url, await t.key("Olu Operator", OPERATOR), "/console/ops/retry-queue"
    )
    await page.locator("summary", has_text="Retry all exhausted (2)").click()
    assert (
        "Retry 2 exhausted entries now?" in await page.locator(".pagehead .confirmbox").inner_text()
    )
    async with page.expect_navigation():
        await page.locator(".pagehead .confirmbox button").click()
    assert "Retried 2 exhausted entries: 2 linked" in await page.locator(".flash").inner_text()
    async with t.api() as http:
        for entry in entries:
            got = (await http.get(f"/api/ops/retry-queue/{entry['id']}")).json()
            assert got["status"] == "resolved"


async def test_a_key_without_reviews_decide_does_not_see_the_review_queue(
    stack: Stack, new_context: NewContext
) -> None:
    """An operator's key: no Reviews link, and the queue URL is a 403 page naming the scope."""
    t = await stack.tenant()
    page = await (await new_context()).new_page()
    await sign_in(page, stack.url, await t.key("Olu Operator", OPERATOR))
    assert await page.locator("header nav a", has_text="Reviews").count() == 0
    assert await page.locator("header nav a", has_text="Operations").count() == 1
    response = await page.goto(f"{stack.url}/console/reviews")
    assert response is not None and response.status == 403
    assert "lacks the scope reviews:decide" in await page.locator("main").inner_text()


async def test_a_form_posted_without_its_csrf_token_is_refused(
    stack: Stack, new_context: NewContext
) -> None:
    """With the session cookie but without the form's token, a decision is 403 in the error
    envelope and the review stays pending; with the token it goes through."""
    t = await stack.tenant()
    await manual_reviews(t, ["IWC Mark XV"])
    page = await (await new_context()).new_page()
    await sign_in(page, stack.url, await t.key("Ana Lima", REVIEWER), "/console/reviews/next")
    review_id = page.url.rsplit("/", 1)[1]
    action = f"{stack.url}/console/reviews/{review_id}/decide"
    refused = await page.request.post(action, form={"decision": "approve"}, max_redirects=0)
    assert refused.status == 403
    error = (await refused.json())["error"]
    assert error["code"] == "E_FORBIDDEN" and "CSRF" in error["message"]
    assert {"severity", "retryable", "requestId"} <= set(error)
    async with t.api() as http:
        assert (await http.get(f"/api/reviews/{review_id}")).json()["status"] == "pending"
    token = await page.locator('meta[name="csrf-token"]').get_attribute("content")
    assert token
    done = await page.request.post(
        action, form={"decision": "approve", "csrf": token}, max_redirects=0
    )
    assert done.status == 303


async def test_pages_reference_no_other_host(stack: Stack, new_context: NewContext) -> None:
    """Every request the overview, queue, item, asset, operations pages and the API docs
    make goes to this service, and the console's HTML names no other host."""
    t = await stack.tenant()
    [asset_id] = await manual_reviews(t, ["Patek Philippe 5711"])
    await exhausted_entries(t, ["Leica M6 body"])
    page = await (await new_context()).new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    await sign_in(page, stack.url, await t.key("Ana Lima", ("reviews:decide", *OPERATOR)))
    console_pages = [
        "/console",
        "/console/reviews",
        "/console/reviews/next",
        f"/console/assets/{asset_id}",
        "/console/assets",
        "/console/ops/retry-queue",
        "/console/ops/held",
        "/console/ops/sagas",
        "/console/ops/circuits",
        "/console/ops/lockers",
        "/console/ops/alerts",
    ]
    absolute = re.compile(r"(?:https?:)?//[a-z0-9.-]+", re.IGNORECASE)
    for path in console_pages:
        await page.goto(f"{stack.url}{path}")
        await page.wait_for_load_state("networkidle")
        html = await page.content()
        assert not absolute.findall(html), (path, absolute.findall(html)[:5])
    for path in ("/docs", "/redoc"):
        await page.goto(f"{stack.url}{path}")
        await page.wait_for_load_state("networkidle")
        title = page.get_by_role("heading", name=re.compile(r"^Proveniq Core"))
        assert await title.count() > 0, path  # it rendered, offline
    own = (stack.url, f"blob:{stack.url}", "data:")
    foreign = [u for u in requests if not u.startswith(own)]
    assert foreign == [], foreign
    assert any(u.endswith("swagger-ui-bundle.js") for u in requests)
    assert any(u.endswith("redoc.standalone.js") for u in requests)


@contextlib.asynccontextmanager
async def webhook_receiver() -> AsyncIterator[str]:
    """A webhook endpoint on loopback that answers every POST 204; yields its URL."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length: *(\d+)", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
            writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/hooks/proveniq"
    finally:
        server.close()
        await server.wait_closed()


async def test_screenshots_of_a_working_day(
    stack: Stack, new_context: NewContext, shots: Path
) -> None:
    """A tenant's day (verified assets, reviews waiting, one decided, a refused link, a
    webhook subscriber): the overview, a review item and an approved asset's page answer
    with their key facts, and are written as 1280x800 screenshots."""
    t = await stack.tenant()
    async with webhook_receiver() as hook, t.api() as http:
        subscribed = await http.post(
            "/api/webhooks", json={"url": hook, "events": list(outbox.EVENTS)}
        )
        assert subscribed.status_code == 201, subscribed.text
        verified = []
        for name in ("Rolex Submariner 16610", "Leica M6 body", "Hermès Kelly 28"):
            body = {"name": name, "category": "watch", "lockerRef": t.refs[0]}
            created = await http.post("/api/assets", json=body)
            assert created.status_code == 201, created.text
            verified.append(created.json()["assetId"])

        async def all_verified() -> bool:
            return all([await asset_status(http, a) == "verified" for a in verified])

        # Before the next fault on the same locker: its evidence must not be theirs.
        await eventually(all_verified, "the first three assets verified")
        first, *_ = await manual_reviews(
            t, ["Omega Speedmaster 3861", "Cartier Santos 100", "IWC Portugieser 5001"]
        )
        await exhausted_entries(t, ["Hilti TE 70 drill"])
        ana = await t.key("Ana Lima", ("reviews:decide", "assets:read", "ops:read"))
        async with t.api(ana) as as_ana:
            [review] = [
                r
                for r in (await as_ana.get("/api/reviews")).json()["items"]
                if r["assetId"] == first
            ]
            decided = await as_ana.post(
                f"/api/reviews/{review['reviewId']}/decision",
                json={
                    "decision": "approve",
                    "reason": "accuracy_acceptable",
                    "note": "Serial and dial match the intake photo; indoor GPS is weak here",
                },
            )
            assert decided.status_code == 200, decided.text

        async def delivered() -> bool:
            asset = await http.get(f"/api/assets/{first}")
            pages = (await http.get("/api/webhooks")).json()["items"]
            deliveries = await http.get(f"/api/webhooks/{pages[0]['webhookId']}/deliveries")
            statuses = {d["status"] for d in deliveries.json()["items"]}
            return asset.json()["status"] == "verified" and statuses == {"delivered"}

        await eventually(delivered, "every webhook delivered")

        page = await (await new_context()).new_page()
        await sign_in(page, stack.url, ana)
        assert "Needs attention" in await page.content()
        await page.screenshot(path=str(shots / "console-overview.png"))

        await page.goto(f"{stack.url}/console/reviews/next")
        assert "Review 1 of 2" in await page.locator(".reviewbar").inner_text()
        await page.screenshot(path=str(shots / "console-review.png"))

        await page.goto(f"{stack.url}/console/assets/{first}")
        history = await page.locator("#history-title + .history").inner_text()
        assert "Ana Lima" in history and "accuracy_acceptable" in history
        assert "delivered" in (await page.locator("#hooks-title + table").inner_text()).lower()
        await page.screenshot(path=str(shots / "console-asset.png"))
