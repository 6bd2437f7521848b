"""Idempotency-Key (see the README) through HTTP, on a test-only route over real PostgreSQL.

The route ``POST /test/idem/{name}`` runs ``run_idempotent`` around a handler that logs each
call in ``idem_calls`` and then behaves as the next entry of ``Harness.plan`` says.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
import pytest_asyncio
from fastapi import Body, Depends, Request, Response
from fastapi.responses import JSONResponse

from proveniq_core import db
from proveniq_core.api.app import create_app
from proveniq_core.api.auth import require
from proveniq_core.api.idempotency import purge_expired, run_idempotent
from proveniq_core.errors import LedgerDownError, ValidationFailedError
from proveniq_core.ledger import keys
from proveniq_core.ledger.keys import Principal
from proveniq_core.service import Core
from tests.integration.conftest import TENANT


@dataclass
class Harness:
    core: Core
    client: httpx.AsyncClient
    transport: httpx.ASGITransport
    plan: list[str] = field(default_factory=list)
    lease: float = 60.0
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def calls(self, tenant: str = TENANT) -> int:
        async with db.connection(self.core.pool) as conn:
            cur = await conn.execute(
                "SELECT count(*) AS n FROM idem_calls WHERE tenant = %s", (tenant,)
            )
            row = await cur.fetchone()
        assert row is not None
        return int(row["n"])

    async def sql(self, query: str) -> None:
        async with db.connection(self.core.pool) as conn:
            await conn.execute(query)

    async def client_for(self, tenant: str) -> httpx.AsyncClient:
        key = await keys.create_key(self.core.pool, tenant, ["assets:write"], name="other")
        return httpx.AsyncClient(
            transport=self.transport,
            base_url="http://core.test",
            headers={"Authorization": f"Bearer {key}"},
        )

    async def handle(self, tenant: str, name: str, payload: dict[str, Any]) -> Response:
        async with db.connection(self.core.pool) as conn:
            cur = await conn.execute(
                "INSERT INTO idem_calls (tenant, route) VALUES (%s, %s) RETURNING id",
                (tenant, name),
            )
            row = await cur.fetchone()
        assert row is not None
        call_id = row["id"]
        step = self.plan.pop(0) if self.plan else "created"
        if step == "block":
            self.entered.set()
            await self.release.wait()
        elif step == "validation":
            raise ValidationFailedError("name is required", details={"field": "name"})
        elif step == "ledger_down":
            raise LedgerDownError()
        elif step == "boom":
            raise RuntimeError("a bug")
        elif step == "deferred":
            return JSONResponse(
                {"callId": call_id, "status": "pending_link"},
                status_code=202,
                headers={"Location": f"/test/calls/{call_id}", "Retry-After": "300"},
            )
        return JSONResponse(
            {"callId": call_id, "name": payload.get("name")},
            status_code=201,
            headers={"Location": f"/test/calls/{call_id}"},
        )


@pytest_asyncio.fixture
async def harness(core: Core, api_key: str) -> AsyncIterator[Harness]:
    async with db.connection(core.pool) as conn:
        await conn.execute(
            "CREATE TABLE idem_calls (id serial PRIMARY KEY, tenant text NOT NULL,"
            " route text NOT NULL)"
        )
    app = create_app(core)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://core.test",
        headers={"Authorization": f"Bearer {api_key}"},
    ) as client:
        h = Harness(core, client, transport)

        @app.post("/test/idem/{name}")
        async def idem_route(
            name: str,
            request: Request,
            payload: Annotated[dict[str, Any], Body()],
            principal: Annotated[Principal, Depends(require("assets:write"))],
        ) -> Response:
            async def handler() -> Response:
                return await h.handle(principal.tenant_id, name, payload)

            return await run_idempotent(
                request,
                core.pool,
                tenant_id=principal.tenant_id,
                body=payload,
                handler=handler,
                lease=h.lease,
            )

        yield h


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


BODY = {"name": "Rolex 16610", "category": "watch"}


async def test_replay_returns_the_stored_response_and_runs_the_handler_once(
    harness: Harness,
) -> None:
    """A retry with the same key and body gets the first 201 again, marked replayed."""
    first = await harness.client.post("/test/idem/a", json=BODY, headers=keyed("k-1"))
    again = await harness.client.post("/test/idem/a", json=BODY, headers=keyed("k-1"))

    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["content-type"] == "application/json"
    assert await harness.calls() == 1


async def test_key_order_of_the_body_does_not_matter(harness: Harness) -> None:
    """The body is compared as canonical JSON: the same fields in another order replay."""
    headers = keyed("k-order") | {"Content-Type": "application/json"}
    first = await harness.client.post(
        "/test/idem/a", content=b'{"name":"x","category":"watch"}', headers=headers
    )
    again = await harness.client.post(
        "/test/idem/a", content=b'{ "category": "watch", "name": "x" }', headers=headers
    )
    assert first.status_code == 201
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json() == first.json()
    assert await harness.calls() == 1


async def test_without_a_key_every_request_runs(harness: Harness) -> None:
    """No Idempotency-Key: each POST runs the handler and nothing is replayed."""
    one = await harness.client.post("/test/idem/a", json=BODY)
    two = await harness.client.post("/test/idem/a", json=BODY)
    assert (one.status_code, two.status_code) == (201, 201)
    assert one.json()["callId"] != two.json()["callId"]
    assert "idempotent-replayed" not in two.headers
    assert await harness.calls() == 2


async def test_202_is_replayed_with_location_and_retry_after(harness: Harness) -> None:
    """A deferred 202 comes back with its Location and Retry-After headers."""
    harness.plan = ["deferred"]
    first = await harness.client.post("/test/idem/a", json=BODY, headers=keyed("k-202"))
    again = await harness.client.post("/test/idem/a", json=BODY, headers=keyed("k-202"))
    assert first.status_code == again.status_code == 202
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["retry-after"] == "300"
    assert again.headers["location"] == first.headers["location"]
    assert again.content == first.content
    assert await harness.calls() == 1


async def test_different_body_is_422_mismatch(harness: Harness) -> None:
    """The same key with another body is refused with E_IDEMPOTENCY_MISMATCH; nothing runs."""
    await harness.client.post("/test/idem/a", json=BODY, headers=keyed("k-mm"))
    resp = await harness.client.post(
        "/test/idem/a", json=BODY | {"name": "Omega"}, headers=keyed("k-mm")
    )
    assert resp.status_code == 422
    error = resp.json()["error"]
    assert error["code"] == "E_IDEMPOTENCY_MISMATCH"
    assert error["retryable"] is False
    assert error["message"] == "This Idempotency-Key was used with a different request."
    assert error["details"] == [{"differs": "body"}]
    assert "idempotent-replayed" not in resp.headers
    assert await harness.calls() == 1


async def test_same_key_on_another_route_is_422_mismatch(harness: Harness) -> None:
    """A key is bound to the route it was first used on."""
    await harness.client.post("/test/idem/a", json=BODY, headers=keyed("k-route"))
    resp = await harness.client.post("/test/idem/b", json=BODY, headers=keyed("k-route"))
    assert resp.status_code == 422
    assert resp.json()["error"]["code"] == "E_IDEMPOTENCY_MISMATCH"
    assert resp.json()["error"]["details"] == [{"differs": "route"}]
    assert await harness.calls() == 1


async def test_concurrent_request_with_the_key_in_flight_is_409(harness: Harness) -> None:
    """While the first request runs, a second gets 409 E_IDEMPOTENCY_IN_FLIGHT (retryable)."""
    harness.plan = ["block"]
    first = asyncio.create_task(
        harness.client.post("/test/idem/a", json=BODY, headers=keyed("k-busy"))
    )
    await asyncio.wait_for(harness.entered.wait(), 10)

    busy = await harness.client.post("/test/idem/a", json=BODY, headers=keyed("k-busy"))
    assert busy.status_code == 409
    assert busy.json()["error"]["code"] == "E_IDEMPOTENCY_IN_FLIGHT"
    assert busy.json()["error"]["retryable"] is True

    harness.release.set()
    done = await first
    assert done.status_code == 201
    later = await harness.client.post("/test/idem/a", json=BODY, headers=keyed("k-busy"))
    assert later.headers["idempotent-replayed"] == "true"
    assert later.content == done.content
    assert await harness.calls() == 1


async def test_simultaneous_first_requests_run_the_handler_once(harness: Harness) -> None:
    """Two requests racing with a fresh key: one runs, the other is told it is in flight."""
    harness.plan = ["block"]
    first = asyncio.create_task(
        harness.client.post("/test/idem/a", json=BODY, headers=keyed("k-race"))
    )
    second = asyncio.create_task(
        harness.client.post("/test/idem/a", json=BODY, headers=keyed("k-race"))
    )
    await asyncio.wait_for(harness.entered.wait(), 10)
    await asyncio.sleep(0.2)  # let the loser reach the database
    harness.release.set()
    statuses = sorted([(await first).status_code, (await second).status_code])
    assert statuses == [201, 409]
    assert await harness.calls() == 1


async def test_503_from_the_handler_is_stored_and_replayed(harness: Harness) -> None:
    """A CoreError (ledger down) becomes the 503 envelope; the retry replays it unchanged."""
    harness.plan = ["ledger_down"]
    first = await harness.client.post("/test/idem/a", json=BODY, headers=keyed("k-503"))
    again = await harness.client.post("/test/idem/a", json=BODY, headers=keyed("k-503"))
    assert first.status_code == 503
    assert first.json()["error"]["code"] == "E_LEDGER_DOWN"
    assert first.json()["error"]["requestId"] == first.headers["x-request-id"]
    assert again.status_code == 503
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content  # the first request's requestId included
    assert again.headers["x-request-id"] != first.headers["x-request-id"]
    assert await harness.calls() == 1


async def test_unexpected_exception_is_stored_as_500(harness: Harness) -> None:
    """A bug in the handler answers the E_INTERNAL envelope, stored like any 5xx."""
    harness.plan = ["boom"]
    first = await harness.client.post("/test/idem/a", json=BODY, headers=keyed("k-500"))
    again = await harness.client.post("/test/idem/a", json=BODY, headers=keyed("k-500"))
    assert first.status_code == 500
    assert first.json()["error"]["code"] == "E_INTERNAL"
    assert again.status_code == 500
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert await harness.calls() == 1


async def test_validation_failure_stores_nothing(harness: Harness) -> None:
    """A 422 E_VALIDATION from the handler is not stored: a retry runs the handler again."""
    harness.plan = ["validation"]
    first = await harness.client.post("/test/idem/a", json=BODY, headers=keyed("k-val"))
    assert first.status_code == 422
    assert first.json()["error"]["code"] == "E_VALIDATION"
    assert first.json()["error"]["details"] == [{"field": "name"}]

    again = await harness.client.post("/test/idem/a", json=BODY, headers=keyed("k-val"))
    assert again.status_code == 201
    assert "idempotent-replayed" not in again.headers
    assert await harness.calls() == 2


async def test_body_rejected_before_the_handler_stores_nothing(harness: Harness) -> None:
    """A body FastAPI refuses never claims the key: the same key then works with a good body."""
    bad = await harness.client.post("/test/idem/a", json=[1, 2], headers=keyed("k-pre"))
    assert bad.status_code == 422
    good = await harness.client.post("/test/idem/a", json=BODY, headers=keyed("k-pre"))
    assert good.status_code == 201
    assert "idempotent-replayed" not in good.headers
    assert await harness.calls() == 1


async def test_same_key_in_another_tenant_is_independent(harness: Harness) -> None:
    """Keys are per tenant: another tenant's identical key runs its own request."""
    first = await harness.client.post("/test/idem/a", json=BODY, headers=keyed("k-shared"))
    async with await harness.client_for("globex") as other:
        theirs = await other.post(
            "/test/idem/a", json=BODY | {"name": "Omega"}, headers=keyed("k-shared")
        )
    assert first.status_code == theirs.status_code == 201
    assert "idempotent-replayed" not in theirs.headers
    assert theirs.json()["name"] == "Omega"
    assert await harness.calls() == 1
    assert await harness.calls("globex") == 1


async def test_key_longer_than_255_characters_is_422(harness: Harness) -> None:
    """An over-long or empty key is refused as E_VALIDATION before anything runs."""
    too_long = await harness.client.post("/test/idem/a", json=BODY, headers=keyed("k" * 256))
    empty = await harness.client.post("/test/idem/a", json=BODY, headers=keyed(""))
    longest = await harness.client.post("/test/idem/a", json=BODY, headers=keyed("k" * 255))
    assert too_long.status_code == empty.status_code == 422
    assert too_long.json()["error"]["code"] == "E_VALIDATION"
    assert too_long.json()["error"]["details"][0]["field"] == "Idempotency-Key"
    assert empty.json()["error"]["code"] == "E_VALIDATION"
    assert longest.status_code == 201
    assert await harness.calls() == 1


async def test_key_older_than_24_hours_counts_as_absent(harness: Harness) -> None:
    """After 24 h the key is free again: the same key (even with a new body) runs afresh."""
    first = await harness.client.post("/test/idem/a", json=BODY, headers=keyed("k-old"))
    await harness.sql(
        "UPDATE idempotency_keys SET created_at = now() - interval '24 hours 1 second'"
    )
    again = await harness.client.post(
        "/test/idem/a", json=BODY | {"name": "Omega"}, headers=keyed("k-old")
    )
    assert again.status_code == 201
    assert "idempotent-replayed" not in again.headers
    assert again.json()["callId"] != first.json()["callId"]
    third = await harness.client.post(
        "/test/idem/a", json=BODY | {"name": "Omega"}, headers=keyed("k-old")
    )
    assert third.headers["idempotent-replayed"] == "true"
    assert third.content == again.content
    assert await harness.calls() == 2


async def test_just_under_24_hours_still_replays(harness: Harness) -> None:
    """Within 24 h the stored response still answers."""
    await harness.client.post("/test/idem/a", json=BODY, headers=keyed("k-young"))
    await harness.sql(
        "UPDATE idempotency_keys SET created_at = now() - interval '23 hours 59 minutes'"
    )
    again = await harness.client.post("/test/idem/a", json=BODY, headers=keyed("k-young"))
    assert again.headers["idempotent-replayed"] == "true"
    assert await harness.calls() == 1


async def test_lapsed_lease_lets_a_retry_take_the_key_over(harness: Harness) -> None:
    """A request stuck past its lease (a dead process) no longer blocks the key; its late
    result is not stored over the retry's."""
    harness.plan = ["block"]
    stuck = asyncio.create_task(
        harness.client.post("/test/idem/a", json=BODY, headers=keyed("k-lease"))
    )
    await asyncio.wait_for(harness.entered.wait(), 10)
    await harness.sql("UPDATE idempotency_keys SET locked_until = now() - interval '1 second'")

    retry = await harness.client.post("/test/idem/a", json=BODY, headers=keyed("k-lease"))
    assert retry.status_code == 201
    assert "idempotent-replayed" not in retry.headers

    harness.release.set()
    late = await stuck
    assert late.status_code == 201
    assert late.json()["callId"] != retry.json()["callId"]
    replay = await harness.client.post("/test/idem/a", json=BODY, headers=keyed("k-lease"))
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.content == retry.content
    assert await harness.calls() == 2


async def test_lapsed_lease_with_another_body_is_still_a_mismatch(harness: Harness) -> None:
    """Taking over a dead request's key needs the same body: its work may have happened."""
    harness.plan = ["block"]
    stuck = asyncio.create_task(
        harness.client.post("/test/idem/a", json=BODY, headers=keyed("k-lease2"))
    )
    await asyncio.wait_for(harness.entered.wait(), 10)
    await harness.sql("UPDATE idempotency_keys SET locked_until = now() - interval '1 second'")
    other = await harness.client.post(
        "/test/idem/a", json=BODY | {"name": "Omega"}, headers=keyed("k-lease2")
    )
    harness.release.set()
    await stuck
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "E_IDEMPOTENCY_MISMATCH"


async def test_a_long_request_keeps_its_lease(harness: Harness) -> None:
    """The running request renews its lease, so a handler slower than the lease is not run
    twice."""
    harness.lease = 0.6
    harness.plan = ["block"]
    first = asyncio.create_task(
        harness.client.post("/test/idem/a", json=BODY, headers=keyed("k-long"))
    )
    await asyncio.wait_for(harness.entered.wait(), 10)
    await asyncio.sleep(1.5)  # 2.5 leases
    busy = await harness.client.post("/test/idem/a", json=BODY, headers=keyed("k-long"))
    harness.release.set()
    assert busy.status_code == 409
    assert (await first).status_code == 201
    assert await harness.calls() == 1


async def test_purge_deletes_only_expired_keys(harness: Harness) -> None:
    """purge_expired removes keys past 24 h and leaves younger ones replaying."""
    await harness.client.post("/test/idem/a", json=BODY, headers=keyed("k-gone"))
    await harness.client.post("/test/idem/a", json=BODY, headers=keyed("k-kept"))
    await harness.sql(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'k-gone'"
    )
    assert await purge_expired(harness.core.pool) == 1
    kept = await harness.client.post("/test/idem/a", json=BODY, headers=keyed("k-kept"))
    assert kept.headers["idempotent-replayed"] == "true"
    async with db.connection(harness.core.pool) as conn:
        cur = await conn.execute("SELECT key FROM idempotency_keys ORDER BY key")
        assert [r["key"] for r in await cur.fetchall()] == ["k-kept"]
