"""Webhooks (docs/architecture.md §7) through the real API, the real workers and a real HTTP
receiver.

Each receiver is an HTTP server on a free local port that records every POST and answers
from a script (then 200). Signatures are checked with the ``standardwebhooks`` library, as
a tenant's receiver would. Long backoffs are skipped by making a delivery due in the
database, never by sleeping. The receivers are on 127.0.0.1, so the Core here is a lab
setup that allows private destinations (``webhook_allow_private``); what a default Core
refuses is in test_webhook_destinations.py.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from standardwebhooks import Webhook

from proveniq_core import db
from proveniq_core.ledger import keys
from proveniq_core.ledger.outbox import emit
from proveniq_core.locker.faults import parse_rule
from proveniq_core.service import Core
from proveniq_core.webhooks import crypto
from proveniq_core.webhooks.delivery import MAX_ATTEMPTS, SCHEDULE, DeliveryWorker
from tests.helpers import eventually
from tests.integration.conftest import TENANT, api_client, core_running, first_ref
from tests.integration.test_verify_outcomes import spoil

ASSET_EVENTS = [
    "asset.created",
    "asset.linked",
    "asset.link_deferred",
    "asset.link_failed",
    "asset.compensated",
]


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A local HTTP server: records each POST, answers ``script`` in order, then 200, each
    with the body ``reply``; counts the connections it accepted."""

    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    reply: bytes = b"ok"
    requests: list[Received] = field(default_factory=list)
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def answer(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str]]:
        with self.lock:
            self.requests.append(Received(headers, body))
            return self.script.pop(0) if self.script else (200, {})

    def received(self) -> list[Received]:
        with self.lock:
            return list(self.requests)

    def accepted(self) -> None:
        with self.lock:
            self.connections += 1

    def verified(self, secret: str) -> list[dict[str, Any]]:
        """Every request's payload, after its signature verified; plus its webhook-id."""
        hook = Webhook(secret)
        out = []
        for r in self.received():
            payload = hook.verify(r.body, r.headers)
            out.append({**payload, "webhookId": r.headers["webhook-id"]})
        return out


@contextmanager
def serving_receivers() -> Iterator[Callable[..., Receiver]]:
    """Start receivers on demand; stop them all on leaving."""
    started: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    def start(*script: tuple[int, dict[str, str]], reply: bytes = b"ok") -> Receiver:
        receiver = Receiver(script=list(script), reply=reply)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                status, headers = receiver.answer(dict(self.headers.items()), body)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(receiver.reply)))
                self.end_headers()
                self.wfile.write(receiver.reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def verify_request(self, request: Any, client_address: Any) -> bool:
                receiver.accepted()
                return True

        server = Server(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        receiver.server = server
        started.append((server, thread))
        return receiver

    try:
        yield start
    finally:
        for server, thread in started:
            server.shutdown()
            server.server_close()
            thread.join()


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    """Start receivers on demand; stop them all at the end of the test."""
    with serving_receivers() as start:
        yield start


@pytest_asyncio.fixture
async def core(database_url: str, mqtt_url: str, tmp_path: Path) -> AsyncIterator[Core]:
    """A Core that may deliver to the local receivers: a lab setup."""
    async with core_running(database_url, mqtt_url, tmp_path, webhook_allow_private=True) as c:
        yield c


@pytest_asyncio.fixture
async def other_tenant(core: Core) -> AsyncIterator[httpx.AsyncClient]:
    key = await keys.create_key(core.pool, "globex", keys.SCOPES, name="other tenant")
    async with api_client(core, key) as http:
        yield http


async def subscribe(
    client: httpx.AsyncClient, url: str, events: list[str], secret: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"url": url, "events": events}
    if secret is not None:
        body["secret"] = secret
    resp = await client.post("/api/webhooks", json=body)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


async def register(client: httpx.AsyncClient, ref: str, expect: int = 201) -> dict[str, Any]:
    resp = await client.post(
        "/api/assets", json={"name": "Leica M6", "category": "camera", "lockerRef": ref}
    )
    assert resp.status_code == expect, resp.text
    return dict(resp.json())


async def deliveries(client: httpx.AsyncClient, webhook_id: str) -> list[dict[str, Any]]:
    resp = await client.get(f"/api/webhooks/{webhook_id}/deliveries")
    assert resp.status_code == 200, resp.text
    return list(resp.json()["items"])


async def webhook(client: httpx.AsyncClient, webhook_id: str) -> dict[str, Any]:
    resp = await client.get(f"/api/webhooks/{webhook_id}")
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


async def wait_for_requests(receiver: Receiver, n: int) -> None:
    async def arrived() -> bool:
        return len(receiver.received()) >= n

    await eventually(arrived)


async def wait_for_attempts(
    client: httpx.AsyncClient, webhook_id: str, n: int, status: str
) -> dict[str, Any]:
    """The endpoint's one delivery, once ``n`` attempts are logged and it is ``status``."""
    found: list[dict[str, Any]] = []

    async def logged() -> bool:
        found[:] = await deliveries(client, webhook_id)
        return len(found) == 1 and len(found[0]["attempts"]) == n and found[0]["status"] == status

    await eventually(logged)
    return found[0]


async def make_due(core: Core, webhook_id: str) -> None:
    """Move the clock: the endpoint's pending deliveries are due now."""
    async with db.connection(core.pool) as conn:
        await conn.execute(
            "UPDATE webhook_deliveries SET next_attempt_at = now()"
            " WHERE endpoint_id = %s AND status = 'pending'",
            (webhook_id,),
        )


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def test_registration_delivers_asset_created_and_linked_signed(
    core: Core, client: httpx.AsyncClient, receivers: Callable[..., Receiver]
) -> None:
    """A registration reaches a subscriber as exactly asset.created and asset.linked (then
    possibly verification.completed), each signed so that the standardwebhooks library
    verifies it, each delivered at the first attempt."""
    receiver = receivers()
    hook = await subscribe(client, receiver.url, [*ASSET_EVENTS, "verification.completed"])
    created = await register(client, first_ref(core))

    def asset_events() -> list[dict[str, Any]]:
        return [p for p in receiver.verified(hook["secret"]) if p["type"].startswith("asset.")]

    async def both_arrived() -> bool:
        return len(asset_events()) >= 2

    await eventually(both_arrived)
    payloads = asset_events()
    assert sorted(p["type"] for p in payloads) == ["asset.created", "asset.linked"]
    by_type = {p["type"]: p for p in payloads}
    saga_id = (await client.get(f"/api/assets/{created['assetId']}")).json()["sagaId"]
    pending = {
        "assetId": created["assetId"],
        "name": "Leica M6",
        "category": "camera",
        "lockerRef": first_ref(core),
        "lockerId": None,
        "status": "pending",
        "previousStatus": None,
        "version": 1,
        "sagaId": saga_id,
        "reason": None,
    }
    assert by_type["asset.created"]["data"] == pending
    assert by_type["asset.linked"]["data"] == pending | {
        "lockerId": created["lockerId"],
        "status": "linked",
        "previousStatus": "pending",
        "version": 2,
    }
    assert by_type["asset.created"]["webhookId"] != by_type["asset.linked"]["webhookId"]

    async def asset_deliveries() -> list[dict[str, Any]]:
        log = await deliveries(client, hook["webhookId"])
        return [d for d in log if d["eventType"].startswith("asset.")]

    async def delivered() -> bool:
        return all(d["status"] == "delivered" for d in await asset_deliveries())

    await eventually(delivered)
    log = await asset_deliveries()  # verification.completed may still be on its way
    assert sorted(d["eventType"] for d in log) == ["asset.created", "asset.linked"]
    for d in log:
        assert [a["statusCode"] for a in d["attempts"]] == [200]
        assert d["attempts"][0]["error"] is None
    for p in receiver.verified(hook["secret"]):  # verification.completed, if Verify was quick
        assert p["data"]["assetId"] == created["assetId"]
    assert {p["webhookId"] for p in payloads} <= {d["messageId"] for d in log}
    assert len(asset_events()) == 2


async def test_hardware_fault_emits_link_failed_and_ops_alert(
    core: Core, client: httpx.AsyncClient, receivers: Callable[..., Receiver]
) -> None:
    """A locker hardware fault (502) reaches a subscriber as asset.created, asset.link_failed
    and the ops.alert raised for it."""
    receiver = receivers()
    hook = await subscribe(client, receiver.url, [*ASSET_EVENTS, "ops.alert"])
    ref = first_ref(core)
    assert core.fleet is not None
    core.fleet.faults.add(parse_rule({"lockerRef": ref, "fault": "hardware_fault", "count": 1}))
    failed = await register(client, ref, expect=502)
    asset_id = failed["error"]["assetId"]

    await wait_for_requests(receiver, 3)
    by_type = {p["type"]: p["data"] for p in receiver.verified(hook["secret"])}
    assert set(by_type) == {"asset.created", "asset.link_failed", "ops.alert"}
    assert by_type["asset.link_failed"]["assetId"] == asset_id
    assert by_type["asset.link_failed"]["status"] == "link_failed"
    assert by_type["asset.link_failed"]["reason"] == "hardware_fault"
    assert by_type["ops.alert"]["code"] == "E_LOCKER_HARDWARE"
    assert by_type["ops.alert"]["severity"] == "critical"
    assert by_type["ops.alert"]["subject"]["assetId"] == asset_id


async def test_failed_attempt_is_retried_with_the_same_webhook_id(
    core: Core, client: httpx.AsyncClient, receivers: Callable[..., Receiver]
) -> None:
    """A 500 is retried on the schedule (not before 5 s) and then delivered: same webhook-id,
    same body, a fresh signature; the log shows both attempts."""
    receiver = receivers((500, {}))
    hook = await subscribe(client, receiver.url, ["asset.created"])
    await register(client, first_ref(core))

    first = await wait_for_attempts(client, hook["webhookId"], 1, "pending")
    assert first["attempts"][0]["statusCode"] == 500
    assert first["lastError"].startswith("HTTP 500")
    wait = at(first["nextAttemptAt"]) - at(first["attempts"][0]["attemptedAt"])
    assert wait >= timedelta(seconds=SCHEDULE[0])
    assert len(receiver.received()) == 1

    await make_due(core, hook["webhookId"])
    done = await wait_for_attempts(client, hook["webhookId"], 2, "delivered")
    assert [a["statusCode"] for a in done["attempts"]] == [500, 200]
    assert done["nextAttemptAt"] is None
    payloads = receiver.verified(hook["secret"])
    assert len(payloads) == 2
    assert payloads[0] == payloads[1]
    assert payloads[0]["webhookId"] == done["messageId"]


@pytest.mark.parametrize(
    ("status", "header"),
    [(429, "seconds"), (503, "http-date")],
)
async def test_retry_after_is_honoured(
    core: Core,
    client: httpx.AsyncClient,
    receivers: Callable[..., Receiver],
    status: int,
    header: str,
) -> None:
    """A 429 or 503 with Retry-After (seconds or an HTTP date) is not retried before then."""
    hour = 3600
    value = (
        str(hour)
        if header == "seconds"
        else email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=hour), usegmt=True)
    )
    receiver = receivers((status, {"Retry-After": value}))
    hook = await subscribe(client, receiver.url, ["asset.created"])
    await register(client, first_ref(core))

    first = await wait_for_attempts(client, hook["webhookId"], 1, "pending")
    assert first["attempts"][0]["statusCode"] == status
    wait = at(first["nextAttemptAt"]) - at(first["attempts"][0]["attemptedAt"])
    assert wait >= timedelta(seconds=hour - 2)  # an HTTP date has whole seconds

    await make_due(core, hook["webhookId"])
    await wait_for_attempts(client, hook["webhookId"], 2, "delivered")
    assert len(receiver.verified(hook["secret"])) == 2


async def test_gone_disables_the_endpoint_until_enabled(
    core: Core, client: httpx.AsyncClient, receivers: Callable[..., Receiver]
) -> None:
    """410 Gone fails the delivery and disables the endpoint at once (no alert): it gets no
    new events and refuses redelivery until enabled, then events flow again."""
    receiver = receivers((410, {}))
    hook = await subscribe(client, receiver.url, ["asset.created"])
    ref = first_ref(core)
    await register(client, ref)

    gone = await wait_for_attempts(client, hook["webhookId"], 1, "failed")
    disabled = await webhook(client, hook["webhookId"])
    assert disabled["status"] == "disabled"
    assert "410" in disabled["disabledReason"]
    alerts = await client.get("/api/ops/alerts", params={"code": "E_WEBHOOK_FAILING"})
    assert alerts.json()["items"] == []

    await register(client, ref)  # its event is written before the 201: none for this endpoint
    assert len(await deliveries(client, hook["webhookId"])) == 1
    resp = await client.post(
        f"/api/webhooks/{hook['webhookId']}/deliveries/{gone['deliveryId']}/redeliver"
    )
    assert resp.status_code == 409, resp.text
    assert resp.json()["error"]["code"] == "E_CONFLICT"

    resp = await client.post(f"/api/webhooks/{hook['webhookId']}/enable")
    assert resp.status_code == 200, resp.text
    assert (resp.json()["status"], resp.json()["disabledReason"]) == ("active", None)
    third = await register(client, ref)
    await wait_for_requests(receiver, 2)
    assert receiver.verified(hook["secret"])[1]["data"]["assetId"] == third["assetId"]


async def test_exhausted_schedule_disables_the_endpoint_and_alerts(
    core: Core, client: httpx.AsyncClient, receivers: Callable[..., Receiver]
) -> None:
    """A receiver failing every attempt is retried on the whole schedule (more than 24 h,
    clock moved), then the delivery fails, the endpoint is disabled and an ops alert is
    raised, which reaches the tenant's other endpoints as ops.alert."""
    failing = receivers(*[(500, {})] * MAX_ATTEMPTS)
    watcher = receivers()
    hook = await subscribe(client, failing.url, ["asset.created"])
    ops = await subscribe(client, watcher.url, ["ops.alert"])
    await register(client, first_ref(core))

    waited = timedelta()
    for n in range(1, MAX_ATTEMPTS):
        d = await wait_for_attempts(client, hook["webhookId"], n, "pending")
        wait = at(d["nextAttemptAt"]) - at(d["attempts"][-1]["attemptedAt"])
        assert wait >= timedelta(seconds=SCHEDULE[n - 1])
        waited += wait
        assert (await webhook(client, hook["webhookId"]))["status"] == "active"
        await make_due(core, hook["webhookId"])
    assert waited >= timedelta(hours=24)

    last = await wait_for_attempts(client, hook["webhookId"], MAX_ATTEMPTS, "failed")
    assert [a["statusCode"] for a in last["attempts"]] == [500] * MAX_ATTEMPTS
    assert len({r.headers["webhook-id"] for r in failing.received()}) == 1
    disabled = await webhook(client, hook["webhookId"])
    assert disabled["status"] == "disabled"

    resp = await client.get("/api/ops/alerts", params={"code": "E_WEBHOOK_FAILING"})
    [alert] = resp.json()["items"]
    assert alert["subject"]["webhookId"] == hook["webhookId"]

    def failing_alerts() -> list[dict[str, Any]]:
        return [e for e in watcher.verified(ops["secret"]) if e["data"]["code"] == alert["code"]]

    async def alerted() -> bool:
        return bool(failing_alerts())

    await eventually(alerted)
    [event] = failing_alerts()
    assert event["type"] == "ops.alert"
    assert event["data"]["alertId"] == alert["alertId"]
    assert event["data"]["subject"]["webhookId"] == hook["webhookId"]

    resp = await client.post(f"/api/webhooks/{hook['webhookId']}/enable")
    assert resp.status_code == 200, resp.text
    resp = await client.get("/api/ops/alerts", params={"code": "E_WEBHOOK_FAILING", "open": True})
    assert resp.json()["items"] == []


async def test_a_lab_schedule_retries_without_waiting_minutes(
    database_url: str, mqtt_url: str, tmp_path: Path, receivers: Callable[..., Receiver]
) -> None:
    """With ``webhook_retry_schedule`` [1] the worker retries a failed delivery by itself
    after a second, and after its second failure (the schedule's end) fails it, disables the
    endpoint and raises the alert, the reason naming the span it retried over."""
    failing = receivers((500, {}), (500, {}))
    async with (
        core_running(
            database_url,
            mqtt_url,
            tmp_path,
            webhook_allow_private=True,
            webhook_retry_schedule=[1.0],
        ) as lab,
        api_client(lab, await keys.create_key(lab.pool, TENANT, keys.SCOPES, name="lab")) as http,
    ):
        hook = await subscribe(http, failing.url, ["asset.created"])
        await register(http, first_ref(lab))

        first = await wait_for_attempts(http, hook["webhookId"], 1, "pending")
        wait = at(first["nextAttemptAt"]) - at(first["attempts"][0]["attemptedAt"])
        assert wait >= timedelta(seconds=1)  # then no make_due: the worker retries by itself
        last = await wait_for_attempts(http, hook["webhookId"], 2, "failed")
        assert [a["statusCode"] for a in last["attempts"]] == [500, 500]
        assert len({r.headers["webhook-id"] for r in failing.received()}) == 1
        disabled = await webhook(http, hook["webhookId"])
        assert disabled["status"] == "disabled"
        assert disabled["disabledReason"] == "2 attempts failed over more than 1 s (last: HTTP 500)"
        resp = await http.get("/api/ops/alerts", params={"code": "E_WEBHOOK_FAILING"})
        [alert] = resp.json()["items"]
        assert alert["subject"]["webhookId"] == hook["webhookId"]


async def test_redelivery_sends_the_same_message_again(
    core: Core, client: httpx.AsyncClient, receivers: Callable[..., Receiver]
) -> None:
    """Redelivering a delivered message sends it again with the same webhook-id, as a new
    delivery in the log."""
    receiver = receivers()
    hook = await subscribe(client, receiver.url, ["asset.created"])
    await register(client, first_ref(core))
    original = await wait_for_attempts(client, hook["webhookId"], 1, "delivered")

    resp = await client.post(
        f"/api/webhooks/{hook['webhookId']}/deliveries/{original['deliveryId']}/redeliver"
    )
    assert resp.status_code == 202, resp.text
    again = resp.json()
    assert again["status"] == "pending"
    assert again["redeliveryOf"] == original["deliveryId"]
    assert again["messageId"] == original["messageId"]

    await wait_for_requests(receiver, 2)
    first, second = receiver.verified(hook["secret"])
    assert first == second
    assert second["webhookId"] == original["messageId"]

    async def delivered() -> bool:
        return all(d["status"] == "delivered" for d in await deliveries(client, hook["webhookId"]))

    await eventually(delivered)
    assert len(await deliveries(client, hook["webhookId"])) == 2


async def test_no_event_for_a_rolled_back_change(
    core: Core, client: httpx.AsyncClient, receivers: Callable[..., Receiver]
) -> None:
    """An event emitted in a transaction that rolls back, or for a registration refused
    (unknown locker), is never delivered; one emitted in a committed transaction is."""
    receiver = receivers()
    hook = await subscribe(client, receiver.url, ["asset.created"])
    await register(client, "no-such-locker", expect=422)

    class Abort(Exception):
        pass

    with pytest.raises(Abort):
        async with db.transaction(core.pool) as conn:
            await emit(conn, TENANT, "asset.created", {"marker": "rolled back"})
            raise Abort
    async with db.transaction(core.pool) as conn:
        await emit(conn, TENANT, "asset.created", {"marker": "committed"})

    await wait_for_attempts(client, hook["webhookId"], 1, "delivered")
    assert [p["data"] for p in receiver.verified(hook["secret"])] == [{"marker": "committed"}]


@pytest.mark.parametrize(
    "body",
    [
        {"url": "ftp://example.com/hook", "events": ["asset.created"]},
        {"url": "http://", "events": ["asset.created"]},
        {"url": "not a url", "events": ["asset.created"]},
        {"url": "javascript:alert(1)", "events": ["asset.created"]},
        {"url": "https://example.com/hook", "events": []},
        {"url": "https://example.com/hook", "events": ["asset.exploded"]},
        {"url": "https://example.com/hook"},
        {"url": "https://example.com/hook", "events": ["asset.created"], "secret": "hunter2"},
        {"url": "https://example.com/hook", "events": ["asset.created"], "secret": "whsec_!!"},
        {"url": "https://example.com/hook", "events": ["asset.created"], "extra": 1},
    ],
)
async def test_invalid_subscriptions_are_refused(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    """A URL that is not http(s) with a host, an unknown or empty event list, a secret that
    is not whsec_ + base64, or an unknown field: 422 in the envelope, nothing created."""
    resp = await client.post("/api/webhooks", json=body)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["code"] == "E_VALIDATION"
    listed = await client.get("/api/webhooks")
    assert listed.json()["items"] == []


async def test_secret_is_shown_once(client: httpx.AsyncClient) -> None:
    """A generated secret is whsec_ + base64 of 32 bytes, a given one is kept; either is in
    the create answer only, never in a read or a listing."""
    generated = await subscribe(client, "https://example.com/a", ["asset.linked"])
    assert generated["secret"].startswith("whsec_")
    assert len(base64.b64decode(generated["secret"].removeprefix("whsec_"))) == 32
    given_secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    given = await subscribe(client, "https://example.com/b", ["ops.alert"], given_secret)
    assert given["secret"] == given_secret

    one = await client.get(f"/api/webhooks/{generated['webhookId']}")
    listed = await client.get("/api/webhooks")
    assert "secret" not in one.json()
    assert all("secret" not in item for item in listed.json()["items"])
    assert given_secret not in listed.text and generated["secret"] not in listed.text


async def test_listing_pages_and_delete(client: httpx.AsyncClient) -> None:
    """The tenant's endpoints list newest first in pages; a deleted one is gone (404)."""
    made = [
        await subscribe(client, f"https://example.com/{i}", ["asset.created"]) for i in range(3)
    ]
    page = (await client.get("/api/webhooks", params={"limit": 2})).json()
    rest = (await client.get("/api/webhooks", params={"cursor": page["nextCursor"]})).json()
    ids = [w["webhookId"] for w in page["items"] + rest["items"]]
    assert ids == [w["webhookId"] for w in reversed(made)]
    assert rest["nextCursor"] is None

    resp = await client.delete(f"/api/webhooks/{made[0]['webhookId']}")
    assert resp.status_code == 204
    assert (await client.get(f"/api/webhooks/{made[0]['webhookId']}")).status_code == 404
    assert (await client.delete(f"/api/webhooks/{made[0]['webhookId']}")).status_code == 404
    assert len((await client.get("/api/webhooks")).json()["items"]) == 2


async def test_scope_and_tenant_isolation(
    core: Core, client: httpx.AsyncClient, other_tenant: httpx.AsyncClient
) -> None:
    """Without webhooks:manage every route is 403; another tenant's endpoint and deliveries
    are 404 to every route, and absent from its listing."""
    hook = await subscribe(client, "https://example.com/hook", ["asset.created"])
    base = f"/api/webhooks/{hook['webhookId']}"
    routes = [
        ("POST", "/api/webhooks", {"url": "https://example.com/x", "events": ["ops.alert"]}),
        ("GET", "/api/webhooks", None),
        ("GET", base, None),
        ("DELETE", base, None),
        ("POST", f"{base}/enable", None),
        ("GET", f"{base}/deliveries", None),
        ("POST", f"{base}/deliveries/{hook['webhookId']}/redeliver", None),
    ]
    scopes = [s for s in keys.SCOPES if s != "webhooks:manage"]
    key = await keys.create_key(core.pool, TENANT, scopes, name="no webhooks")
    async with api_client(core, key) as limited:
        for method, path, body in routes:
            resp = await limited.request(method, path, json=body)
            assert resp.status_code == 403, (method, path, resp.text)
            assert resp.json()["error"]["code"] == "E_FORBIDDEN"

    for method, path, body in routes[2:]:
        resp = await other_tenant.request(method, path, json=body)
        assert resp.status_code == 404, (method, path, resp.text)
        assert resp.json()["error"]["code"] == "E_NOT_FOUND"
    assert (await other_tenant.get("/api/webhooks")).json()["items"] == []
    assert (await other_tenant.get("/api/webhooks/not-a-uuid")).status_code == 404
    assert (await client.get(base)).status_code == 200  # untouched by the other tenant


@pytest.mark.parametrize("batch", [1, 5])
async def test_concurrent_workers_deliver_each_message_once(
    database_url: str,
    mqtt_url: str,
    tmp_path: Path,
    receivers: Callable[..., Receiver],
    batch: int,
) -> None:
    """Several workers on one database (as in several processes) claim with SKIP LOCKED,
    one delivery or ``batch`` at a time: every message is delivered exactly once."""
    receiver = receivers()
    async with core_running(
        database_url, mqtt_url, tmp_path, role="api", webhook_allow_private=True
    ) as core:
        key = await keys.create_key(core.pool, TENANT, keys.SCOPES, name="workers")
        async with api_client(core, key) as client:
            hook = await subscribe(client, receiver.url, ["ops.alert"])
        async with db.transaction(core.pool) as conn:
            for n in range(30):
                await emit(conn, TENANT, "ops.alert", {"n": n})
        box = crypto.box_for(core.settings)
        workers = [DeliveryWorker(core.pool, secrets=box, allow_private=True) for _ in range(4)]

        async def drain(worker: DeliveryWorker) -> None:
            while jobs := await worker.claim(batch):
                for job in jobs:
                    await worker._deliver(job)

        try:
            await asyncio.gather(*(drain(w) for w in workers for _ in range(3)))
        finally:
            for w in workers:
                await w.aclose()
    payloads = receiver.verified(hook["secret"])
    assert sorted(p["data"]["n"] for p in payloads) == list(range(30))
    assert len({p["webhookId"] for p in payloads}) == 30


async def events_of(receiver: Receiver, secret: str, asset_id: str, n: int) -> list[str]:
    """The first ``n`` event types the receiver verified for ``asset_id``, sorted (delivery
    order across events is not guaranteed)."""
    found: list[str] = []

    async def arrived() -> bool:
        payloads = receiver.verified(secret)
        found[:] = [p["type"] for p in payloads if p["data"].get("assetId") == asset_id]
        return len(found) >= n

    await eventually(arrived)
    return sorted(found)


ALL_EVENTS = [*ASSET_EVENTS, "verification.completed", "review.required"]


async def test_a_deferred_link_is_followed_to_verification_completed(
    core: Core, client: httpx.AsyncClient, receivers: Callable[..., Receiver]
) -> None:
    """The locker answers past the request's budget: the subscriber follows the asset from
    asset.created through asset.link_deferred and asset.linked to verification.completed,
    every one signed."""
    receiver = receivers()
    hook = await subscribe(client, receiver.url, ALL_EVENTS)
    ref = first_ref(core)
    assert core.fleet is not None
    core.fleet.faults.add(parse_rule({"lockerRef": ref, "fault": "delay", "delayMs": 2500}))
    deferred = await register(client, ref, expect=202)

    types = await events_of(receiver, hook["secret"], deferred["assetId"], 4)
    assert types == [
        "asset.created",
        "asset.link_deferred",
        "asset.linked",
        "verification.completed",
    ]
    [done] = [p for p in receiver.verified(hook["secret"]) if p["type"] == "verification.completed"]
    assert done["data"]["outcome"] == "verified"


async def test_review_required_then_cancelled_registration_events(
    core: Core, client: httpx.AsyncClient, receivers: Callable[..., Receiver]
) -> None:
    """Evidence that needs a person emits review.required (with the review's id); a held
    registration an operator cancels emits asset.compensated."""
    receiver = receivers()
    hook = await subscribe(client, receiver.url, ALL_EVENTS)
    ref = first_ref(core)
    await spoil(client, ref, "low_accuracy")
    review_asset = (await register(client, ref))["assetId"]
    types = await events_of(receiver, hook["secret"], review_asset, 4)
    assert types == ["asset.created", "asset.linked", "review.required", "verification.completed"]
    [required] = [p for p in receiver.verified(hook["secret"]) if p["type"] == "review.required"]
    assert required["data"]["reviewId"]

    assert core.fleet is not None
    core.fleet.faults.add(parse_rule({"lockerRef": ref, "fault": "hardware_fault", "count": 1}))
    held = (await register(client, ref, expect=502))["error"]["assetId"]
    cancelled = await client.post(f"/api/ops/assets/{held}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    types = await events_of(receiver, hook["secret"], held, 3)
    assert types == ["asset.compensated", "asset.created", "asset.link_failed"]


async def test_a_retried_subscription_with_its_key_is_created_once(
    client: httpx.AsyncClient,
) -> None:
    """Idempotency-Key on POST /api/webhooks: the retry gets the same endpoint and secret."""
    body = {"url": "https://hooks.example.com/in", "events": ["asset.linked"]}
    headers = {"Idempotency-Key": "subscribe-1"}
    first = await client.post("/api/webhooks", json=body, headers=headers)
    again = await client.post("/api/webhooks", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert len((await client.get("/api/webhooks")).json()["items"]) == 1


async def test_a_receivers_answer_is_never_echoed_in_the_log(
    core: Core, client: httpx.AsyncClient, receivers: Callable[..., Receiver]
) -> None:
    """What a receiver answers stays out of the delivery log: a failed attempt records its
    status code and timing, not the body (it could be an internal service's page)."""
    leak = b"<html>INTERNAL-ADMIN-PAGE db_password=hunter2</html>" * 10
    receiver = receivers((500, {}), reply=leak)
    hook = await subscribe(client, receiver.url, ["asset.created"])
    await register(client, first_ref(core))

    failed = await wait_for_attempts(client, hook["webhookId"], 1, "pending")
    assert failed["lastError"] == "HTTP 500"
    assert failed["attempts"][0]["error"] == "HTTP 500"
    assert failed["attempts"][0]["statusCode"] == 500
    log = await client.get(f"/api/webhooks/{hook['webhookId']}/deliveries")
    assert "INTERNAL" not in log.text and "hunter2" not in log.text


async def test_secrets_are_sealed_at_rest_and_still_sign(
    core: Core, client: httpx.AsyncClient, receivers: Callable[..., Receiver]
) -> None:
    """The database holds the endpoint's secret only sealed (and the idempotency store the
    creation answer only sealed), under a key file outside it (mode 0600); a retry with the
    same Idempotency-Key still shows the secret, and deliveries verify with it."""
    receiver = receivers()
    body = {"url": receiver.url, "events": ["ops.alert"]}
    headers = {"Idempotency-Key": "sealed-1"}
    first = await client.post("/api/webhooks", json=body, headers=headers)
    assert first.status_code == 201, first.text
    secret = first.json()["secret"]
    async with db.connection(core.pool) as conn:
        cur = await conn.execute("SELECT secret FROM webhook_endpoints")
        [stored] = [r["secret"] for r in await cur.fetchall()]
        cur = await conn.execute("SELECT response_body FROM idempotency_keys")
        [cached] = [bytes(r["response_body"]) for r in await cur.fetchall()]
    assert stored.startswith("fernet:") and secret not in stored
    assert secret.removeprefix("whsec_") not in stored
    assert cached.startswith(b"fernet:") and secret.encode() not in cached
    key_file = core.settings.home / crypto.KEY_FILE
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key_file.read_text().strip() not in stored

    again = await client.post("/api/webhooks", json=body, headers=headers)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()

    async with db.transaction(core.pool) as conn:
        await emit(conn, TENANT, "ops.alert", {"n": 1})
    await wait_for_requests(receiver, 1)
    assert [p["data"] for p in receiver.verified(secret)] == [{"n": 1}]


async def test_delete_racing_enable_answers_404_never_500(
    core: Core, client: httpx.AsyncClient
) -> None:
    """DELETE and POST …/enable of one (disabled) endpoint at the same moment, 40 times: the
    delete answers 204, the enable 200 (it came first) or 404 (the endpoint was gone), never
    a 500; nothing is left."""
    hooks = [
        await subscribe(client, f"https://example.com/{n}", ["asset.created"]) for n in range(40)
    ]
    async with db.connection(core.pool) as conn:
        await conn.execute(
            "UPDATE webhook_endpoints SET status = 'disabled', disabled_at = now(),"
            " disabled_reason = 'test'"
        )
    statuses: list[tuple[int, int]] = []
    for hook in hooks:
        path = f"/api/webhooks/{hook['webhookId']}"
        deleted, enabled = await asyncio.gather(client.delete(path), client.post(f"{path}/enable"))
        statuses.append((deleted.status_code, enabled.status_code))
        if enabled.status_code == 404:
            assert enabled.json()["error"]["code"] == "E_NOT_FOUND"
    assert {d for d, _ in statuses} == {204}
    assert {e for _, e in statuses} <= {200, 404}
    assert (await client.get("/api/webhooks")).json()["items"] == []
