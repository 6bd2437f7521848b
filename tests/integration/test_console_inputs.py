"""NUL characters in what the console reads: every form field, query parameter and path
segment with one is a 422 naming it (an error page for a page, the envelope for an action),
checked before anything reaches PostgreSQL (whose text holds no NUL) and never a 500."""

from __future__ import annotations

import httpx
import pytest

from proveniq_core.ledger import keys
from proveniq_core.service import Core
from tests.integration.conftest import first_ref
from tests.integration.test_console import browser, csrf_of, named_key, sign_in
from tests.integration.test_ops_actions import exhausted_entry
from tests.integration.test_ops_api import inject
from tests.integration.test_reviews import open_review

NUL = "\x00"


def refused_fields(response: httpx.Response) -> list[str]:
    """The fields a 422 in the envelope names, each for its NUL character."""
    assert response.status_code == 422, response.text[-2000:]
    error = response.json()["error"]
    assert error["code"] == "E_VALIDATION"
    assert "must not contain NUL characters" in error["message"]
    assert all(p["type"] == "nul" for p in error["details"])
    return [p["field"] for p in error["details"]]


def refused_page(response: httpx.Response, field: str) -> None:
    """A page refused with a 422 error page naming ``field``."""
    assert response.status_code == 422, response.text[-2000:]
    assert response.headers["content-type"].startswith("text/html")
    assert f"{field}: must not contain NUL characters" in response.text
    assert "E_VALIDATION" in response.text


async def test_sign_in_refuses_nul_in_the_key_and_next_fields(core: Core) -> None:
    """A sign-in form with a NUL in the key or where to go next: 422 naming the field, no
    session; the same form without it signs in."""
    key = await named_key(core, "Ana Lima", keys.SCOPES)
    async with browser(core) as http:
        for data, field in (
            ({"key": key + NUL}, "key"),
            ({"key": f"pk_{NUL}"}, "key"),
            ({"key": key, "next": f"/console{NUL}/assets"}, "next"),
        ):
            token = csrf_of((await http.get("/console/login")).text)
            refused = await http.post("/console/login", data=data | {"csrf": token})
            assert refused_fields(refused) == [field]
            assert "proveniq_session" not in refused.headers.get("set-cookie", "")
            assert (await http.get("/console")).status_code == 303  # still signed out
        token = csrf_of((await http.get("/console/login")).text)
        shouting = await http.post(  # media types are case-insensitive
            "/console/login",
            content=f"key=pk_%00&csrf={token}",
            headers={"Content-Type": "Application/X-WWW-Form-URLEncoded"},
        )
        assert refused_fields(shouting) == ["key"]
        signed = await sign_in(http, key)
        assert signed.status_code == 303 and signed.headers["location"] == "/console"


async def test_a_review_decision_with_nul_in_its_note_or_reason_is_not_recorded(
    core: Core, client: httpx.AsyncClient
) -> None:
    """Approve with a NUL in the note, reject with one in the reason, a NUL in the decision
    or a field name: 422 naming the field; the review stays pending, then a clean note is
    recorded."""
    review = await open_review(core, client)
    key = await named_key(core, "Ana Lima", ["reviews:decide"])
    path = f"/console/reviews/{review['reviewId']}/decide"
    async with browser(core) as http:
        await sign_in(http, key)
        csrf = csrf_of((await http.get(f"/console/reviews/{review['reviewId']}")).text)
        for data, field in (
            ({"decision": "approve", "note": f"looks fine{NUL}"}, "note"),
            ({"decision": "reject", "reason": f"gps_out_of_geofence{NUL}"}, "reason"),
            ({"decision": f"approve{NUL}"}, "decision"),
            ({"decision": "approve", f"note{NUL}": "x"}, f"note{NUL}"),
        ):
            refused = await http.post(path, data=data | {"csrf": csrf})
            assert refused_fields(refused) == [field]
            current = await client.get(f"/api/reviews/{review['reviewId']}")
            assert current.json()["status"] == "pending", current.text
        done = await http.post(path, data={"decision": "approve", "note": "fine", "csrf": csrf})
        assert done.status_code == 303, done.text
    decided = (await client.get(f"/api/reviews/{review['reviewId']}")).json()
    assert (decided["status"], decided["note"]) == ("approved", "fine")


async def test_operations_forms_with_nul_change_nothing(
    core: Core, client: httpx.AsyncClient
) -> None:
    """A discard reason (in a URL-encoded or a multipart form), a maintenance length, the page
    to go back to and a sign-out, each with a NUL: 422 naming the field; the entry stays
    exhausted, the locker out of maintenance, the session alive."""
    ref = first_ref(core)
    await inject(client, lockerRef=ref, fault="hardware_fault")
    entry = await exhausted_entry(core, client, ref)
    key = await named_key(core, "Ana Lima", keys.SCOPES)
    async with browser(core) as http:
        await sign_in(http, key)
        csrf = csrf_of((await http.get("/console/ops/retry-queue")).text)
        actions = (
            (f"/console/ops/retry-queue/{entry['id']}/discard", {"reason": f"gone{NUL}"}, "reason"),
            (f"/console/ops/retry-queue/{entry['id']}/retry", {"back": f"/console{NUL}"}, "back"),
            ("/console/ops/retry-queue/retry-exhausted", {"back": f"/console/ops{NUL}"}, "back"),
            (f"/console/ops/lockers/{ref}/maintenance", {"hours": f"1{NUL}"}, "hours"),
            ("/console/logout", {"why": f"done{NUL}"}, "why"),
        )
        for path, data, field in actions:
            refused = await http.post(path, data=data | {"csrf": csrf})
            assert refused_fields(refused) == [field], path
        multipart = await http.post(  # a form sent as multipart is read the same way
            f"/console/ops/retry-queue/{entry['id']}/discard",
            data={"reason": f"gone{NUL}", "csrf": csrf},
            files={"attachment": ("note.txt", b"not read")},
        )
        assert refused_fields(multipart) == ["reason"]
        assert (await http.get("/console")).status_code == 200  # not signed out
    after = (await client.get(f"/api/assets/{entry['assetId']}")).json()
    assert after["status"] == "link_failed"
    listed = await client.get("/api/ops/retry-queue", params={"status": "exhausted"})
    assert [e["id"] for e in listed.json()["items"]] == [entry["id"]]
    locker = (await client.get(f"/api/lockers/{ref}")).json()
    assert locker.get("maintenanceUntil") is None, locker


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/console/assets", {"q": f"Rolex{NUL}"}, "q"),
        ("/console/assets", {"status": f"linked{NUL}"}, "status"),
        ("/console/assets", {"cursor": f"abc{NUL}"}, "cursor"),
        ("/console/ops/retry-queue", {"asset": f"a{NUL}"}, "asset"),
        ("/console/ops/sagas", {"name": f"asset{NUL}"}, "name"),
        ("/console/ops/alerts", {"state": f"open{NUL}"}, "state"),
        ("/console/ops/webhooks", {"cursor": f"x{NUL}"}, "cursor"),
        ("/console/reviews", {f"filter{NUL}": "x"}, f"filter{NUL}"),
    ],
)
async def test_a_page_with_nul_in_its_query_is_a_422_page(
    core: Core, path: str, params: dict[str, str], field: str
) -> None:
    """The search box and every page's query parameters: a NUL is a 422 error page naming
    the parameter."""
    key = await named_key(core, "Ana Lima", keys.SCOPES)
    async with browser(core) as http:
        await sign_in(http, key)
        refused_page(await http.get(path, params=params), field)


async def test_nul_in_a_path_segment_or_a_sign_in_link_is_refused(core: Core) -> None:
    """An asset id with a NUL is a 422 page naming it; so is the sign-in page's next."""
    key = await named_key(core, "Ana Lima", keys.SCOPES)
    async with browser(core) as http:
        refused_page(await http.get("/console/login", params={"next": f"/console{NUL}"}), "next")
        await sign_in(http, key)
        refused_page(await http.get("/console/assets/ab%00cd"), "asset_id")
        refused_page(await http.get("/console/ops/sagas/ab%00cd"), "saga_id")
