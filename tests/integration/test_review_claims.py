"""Review claims, reason codes and the review-scoped photos (docs/console.md): what the
console does goes through these routes, and a script can do the same."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import psycopg

from proveniq_core.ledger import keys
from proveniq_core.service import Core
from tests.integration.conftest import TENANT, api_client
from tests.integration.test_reviews import open_review


async def test_a_claim_holds_the_review_against_another_key_until_released(
    core: Core, client: httpx.AsyncClient
) -> None:
    """Ana claims for 15 minutes; Ben's claim and decision are 409 naming Ana; once Ana
    releases, Ben claims and decides, recorded with his name."""
    review = await open_review(core, client)
    rid = review["reviewId"]
    ana = await keys.create_key(core.pool, TENANT, ["reviews:decide"], name="Ana Lima")
    ben = await keys.create_key(core.pool, TENANT, ["reviews:decide"], name="Ben Okafor")
    async with api_client(core, ana) as a, api_client(core, ben) as b:
        claimed = await a.post(f"/api/reviews/{rid}/claim")
        assert claimed.status_code == 200, claimed.text
        body = claimed.json()
        assert body["claimedBy"] == "Ana Lima"
        until = datetime.fromisoformat(body["claimedUntil"])
        assert timedelta(minutes=14) < until - datetime.now(UTC) <= timedelta(minutes=15)
        assert (await a.get(f"/api/reviews/{rid}")).json()["claimedBy"] == "Ana Lima"
        renewed = await a.post(f"/api/reviews/{rid}/claim")
        assert datetime.fromisoformat(renewed.json()["claimedUntil"]) >= until

        refused = await b.post(f"/api/reviews/{rid}/claim")
        assert refused.status_code == 409
        error = refused.json()["error"]
        assert error["code"] == "E_CONFLICT" and error["details"]["heldBy"] == "Ana Lima"
        decided = await b.post(f"/api/reviews/{rid}/decision", json={"decision": "approve"})
        assert decided.status_code == 409
        assert "held by Ana Lima" in decided.json()["error"]["message"]
        assert (await b.delete(f"/api/reviews/{rid}/claim")).status_code == 409

        assert (await a.delete(f"/api/reviews/{rid}/claim")).status_code == 204
        assert (await a.delete(f"/api/reviews/{rid}/claim")).status_code == 204  # nothing held
        assert (await a.get(f"/api/reviews/{rid}")).json()["claimedBy"] is None
        assert (await b.post(f"/api/reviews/{rid}/claim")).status_code == 200
        done = await b.post(
            f"/api/reviews/{rid}/decision",
            json={"decision": "approve", "reason": "accuracy_acceptable"},
        )
        assert done.status_code == 200, done.text
        assert (done.json()["decidedBy"], done.json()["reason"]) == (
            "Ben Okafor",
            "accuracy_acceptable",
        )
        assert done.json()["claimedBy"] is None
        late = await a.post(f"/api/reviews/{rid}/claim")
        assert late.status_code == 409
        assert "already decided" in late.json()["error"]["message"]


async def test_an_expired_claim_is_nobodys(
    core: Core, client: httpx.AsyncClient, database_url: str
) -> None:
    """A claim whose 15 minutes ran out no longer blocks another reviewer's decision."""
    review = await open_review(core, client)
    rid = review["reviewId"]
    ana = await keys.create_key(core.pool, TENANT, ["reviews:decide"], name="Ana Lima")
    async with api_client(core, ana) as a:
        assert (await a.post(f"/api/reviews/{rid}/claim")).status_code == 200
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(
            "UPDATE reviews SET claimed_until = now() - interval '1 second' WHERE id = %s", (rid,)
        )
    assert (await client.get(f"/api/reviews/{rid}")).json()["claimedBy"] is None
    decided = await client.post(
        f"/api/reviews/{rid}/decision", json={"decision": "reject", "note": "wrong watch"}
    )
    assert decided.status_code == 200, decided.text


async def test_reason_codes_and_the_reject_note_are_checked(
    core: Core, client: httpx.AsyncClient
) -> None:
    """The reason codes are listed per outcome; an unknown code, or a rejection without a
    note, is 422 in the envelope and leaves the review pending."""
    review = await open_review(core, client)
    path = f"/api/reviews/{review['reviewId']}/decision"
    reasons = (await client.get("/api/reviews/reasons")).json()
    assert "accuracy_acceptable" in reasons["approve"] and "wrong_item" in reasons["reject"]
    for body in (
        {"decision": "approve", "reason": "wrong_item"},
        {"decision": "reject", "reason": "wrong_item"},
        {"decision": "reject", "reason": "wrong_item", "note": "   "},
    ):
        refused = await client.post(path, json=body)
        assert refused.status_code == 422, body
        assert refused.json()["error"]["code"] == "E_VALIDATION"
    assert (await client.get(f"/api/reviews/{review['reviewId']}")).json()["status"] == "pending"


async def test_a_reviewer_sees_the_photos_with_reviews_decide_alone(
    core: Core, client: httpx.AsyncClient
) -> None:
    """The review's photo links need only reviews:decide; a photo not of the review is 404,
    and so is a review id that is not one."""
    review = await open_review(core, client)
    reviewer = await keys.create_key(core.pool, TENANT, ["reviews:decide"], name="Ana Lima")
    [photo] = review["evidence"]
    link = photo["links"]["content"]
    assert link == f"/api/reviews/{review['reviewId']}/evidence/{photo['sha256']}"
    async with api_client(core, reviewer) as http:
        served = await http.get(link)
        assert served.status_code == 200 and served.headers["content-type"] == "image/jpeg"
        other = link.replace(photo["sha256"], "0" * 64)
        assert (await http.get(other)).status_code == 404
        assert (await http.get(f"/api/reviews/{uuid.uuid4()}")).status_code == 404
        assert (await http.get("/api/reviews/not-a-uuid")).status_code == 404
        assert (await http.get(f"/api/assets/{review['assetId']}/evidence")).status_code == 403
