"""Webhooks reach public addresses only (unless private ones are allowed): refused at
creation with a 422 in the envelope, and again at every delivery after resolving the name,
connecting to the very address that was checked.

Names are resolved by a stub standing in for DNS (``destinations.resolve_name``), so a
name can "resolve" to the local receiver, or change its answer, as an attacker's DNS would.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import pytest_asyncio
from psycopg.conninfo import make_conninfo

from proveniq_core import db
from proveniq_core.ledger import keys
from proveniq_core.ledger.outbox import emit
from proveniq_core.service import Core
from proveniq_core.webhooks import destinations
from tests.integration.conftest import TENANT, api_client, core_running
from tests.integration.test_webhooks import (
    Receiver,
    serving_receivers,
    subscribe,
    wait_for_attempts,
    wait_for_requests,
)

REFUSED = [
    ("http://127.0.0.1/hooks", "loopback"),
    ("http://127.1/hooks", "loopback"),
    ("http://2130706433/hooks", "loopback"),
    ("http://0x7f.0.0.1/hooks", "loopback"),
    ("http://0177.0.0.1/hooks", "loopback"),
    ("http://0/hooks", "this network"),
    ("http://0.0.0.0:8080/hooks", "this network"),
    ("http://[::1]/hooks", "loopback"),
    ("http://[::ffff:127.0.0.1]/hooks", "IPv6 form of a loopback"),
    ("http://[::ffff:169.254.169.254]/hooks", "IPv6 form of a link-local"),
    ("http://[fd00:ec2::254]/hooks", "unique local"),
    ("http://[fe80::1]/hooks", "link-local"),
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("http://10.0.0.5/hooks", "RFC 1918"),
    ("http://172.16.0.1/hooks", "RFC 1918"),
    ("http://192.168.1.1/hooks", "RFC 1918"),
    ("http://100.64.0.1/hooks", "CGNAT"),
    ("http://224.0.0.1/hooks", "multicast"),
    ("http://240.0.0.1/hooks", "reserved"),
    ("http://localhost:8080/hooks", "local machine"),
    ("http://LocalHost./hooks", "local machine"),
    ("http://metadata.localhost/hooks", "local machine"),
    ("https://user:pass@hooks.example.com/in", "credentials"),
]


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    with serving_receivers() as start:
        yield start


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Stub DNS: names in this dict resolve to its addresses (change them to rebind); every
    other name does not resolve."""
    records: dict[str, list[str]] = {}

    async def resolve(host: str, port: int) -> list[str]:
        if host not in records:
            raise destinations.UnresolvedName(f"{host} does not resolve")
        return list(records[host])

    monkeypatch.setattr(destinations, "resolve_name", resolve)
    return records


async def nothing_created(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/webhooks")).json()["items"] == []


async def test_non_public_destinations_are_refused_at_creation(client: httpx.AsyncClient) -> None:
    """Each internal address form, localhost and credentials in the URL: 422 E_VALIDATION in
    the envelope, saying why, with the request id; nothing is created. (One Core for all the
    forms: the unit tests parametrize them one by one.)"""
    for url, why in REFUSED:
        resp = await client.post("/api/webhooks", json={"url": url, "events": ["asset.created"]})
        assert resp.status_code == 422, (url, resp.text)
        error = resp.json()["error"]
        assert error["code"] == "E_VALIDATION", url
        assert error["message"].startswith("Invalid request: url: "), url
        assert why in error["message"], (url, error["message"])
        assert error["details"][0]["field"] == "url", url
        assert error["requestId"] == resp.headers["X-Request-ID"], url
    await nothing_created(client)


async def test_a_name_resolving_to_a_private_address_is_refused_at_creation(
    client: httpx.AsyncClient, dns: dict[str, list[str]]
) -> None:
    """A name any of whose addresses is internal is refused, without naming the address."""
    dns["hooks.example.com"] = ["93.184.215.14", "10.20.30.40"]
    resp = await client.post(
        "/api/webhooks", json={"url": "https://hooks.example.com/in", "events": ["ops.alert"]}
    )
    assert resp.status_code == 422, resp.text
    message = resp.json()["error"]["message"]
    assert "hooks.example.com resolves to a non-public (private (RFC 1918)) address" in message
    assert "10.20.30.40" not in resp.text
    await nothing_created(client)


async def test_public_and_not_yet_resolving_names_are_accepted(
    client: httpx.AsyncClient, dns: dict[str, list[str]]
) -> None:
    """A name resolving to public addresses, a public address, and a name that does not
    resolve yet (every delivery checks it again) are accepted."""
    dns["hooks.example.com"] = ["93.184.215.14", "2606:4700::1111"]
    for url in (
        "https://hooks.example.com/in",
        "https://93.184.215.14/in",
        "https://not-yet.example.net/in",
    ):
        resp = await client.post("/api/webhooks", json={"url": url, "events": ["ops.alert"]})
        assert resp.status_code == 201, resp.text


async def test_a_name_rebound_to_loopback_is_refused_at_delivery(
    core: Core,
    client: httpx.AsyncClient,
    dns: dict[str, list[str]],
    receivers: Callable[..., Receiver],
) -> None:
    """A name public at creation that resolves to the local receiver at delivery (DNS
    rebinding): the attempt is recorded as refused and retried later, and the receiver gets
    no connection at all."""
    receiver = receivers()
    dns["rebind.example.com"] = ["93.184.215.14"]
    hook = await subscribe(
        client, f"http://rebind.example.com:{receiver.port}/hooks", ["ops.alert"]
    )
    dns["rebind.example.com"] = ["127.0.0.1"]
    async with db.transaction(core.pool) as conn:
        await emit(conn, TENANT, "ops.alert", {"n": 1})

    refused = await wait_for_attempts(client, hook["webhookId"], 1, "pending")
    [attempt] = refused["attempts"]
    assert attempt["statusCode"] is None
    assert attempt["error"].startswith("DestinationRefused: rebind.example.com resolves to")
    assert "loopback" in attempt["error"] and "127.0.0.1" not in attempt["error"]
    assert receiver.connections == 0 and receiver.received() == []


@pytest_asyncio.fixture
async def lab(database_url: str, mqtt_url: str, tmp_path: Path) -> AsyncIterator[Core]:
    """A Core that allows private destinations (PROVENIQ_WEBHOOK_ALLOW_PRIVATE)."""
    async with core_running(database_url, mqtt_url, tmp_path, webhook_allow_private=True) as c:
        yield c


async def test_allow_private_delivers_to_the_checked_address_with_the_name_as_host(
    lab: Core,
    dns: dict[str, list[str]],
    receivers: Callable[..., Receiver],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With private destinations allowed, a name resolving to the local receiver gets the
    delivery, signed; the name is resolved once per attempt and the POST goes to that
    address with the name in Host (httpx never resolves it again)."""
    receiver = receivers()
    asked: list[str] = []
    stub = destinations.resolve_name

    async def counting(host: str, port: int) -> list[str]:
        asked.append(host)
        return await stub(host, port)

    monkeypatch.setattr(destinations, "resolve_name", counting)
    dns["lab-receiver.example"] = ["127.0.0.1"]
    key = await keys.create_key(lab.pool, TENANT, keys.SCOPES, name="lab")
    async with api_client(lab, key) as client:
        url = f"http://lab-receiver.example:{receiver.port}/hooks"
        hook = await subscribe(client, url, ["ops.alert"])
        asked.clear()
        async with db.transaction(lab.pool) as conn:
            await emit(conn, TENANT, "ops.alert", {"n": 7})
        await wait_for_requests(receiver, 1)
        await wait_for_attempts(client, hook["webhookId"], 1, "delivered")
    [request] = receiver.received()
    host = {k.lower(): v for k, v in request.headers.items()}["host"]
    assert host == f"lab-receiver.example:{receiver.port}"
    assert [p["data"] for p in receiver.verified(hook["secret"])] == [{"n": 7}]
    assert asked == ["lab-receiver.example"]


async def test_a_default_core_refuses_at_delivery_what_it_would_refuse_at_creation(
    core: Core, receivers: Callable[..., Receiver]
) -> None:
    """An endpoint written before the check existed (straight into the database) to the
    local receiver: its deliveries are refused, nothing connects to the receiver."""
    receiver = receivers()
    key = await keys.create_key(core.pool, TENANT, keys.SCOPES, name="old endpoint")
    async with api_client(core, key) as client:
        hook = await subscribe(client, "https://hooks.invalid/in", ["ops.alert"])
        async with db.connection(core.pool) as conn:
            await conn.execute(
                "UPDATE webhook_endpoints SET url = %s WHERE id = %s",
                (receiver.url, hook["webhookId"]),
            )
        async with db.transaction(core.pool) as conn:
            await emit(conn, TENANT, "ops.alert", {"n": 1})
        refused = await wait_for_attempts(client, hook["webhookId"], 1, "pending")
    assert refused["attempts"][0]["error"].startswith("DestinationRefused: 127.0.0.1 is a loop")
    assert receiver.connections == 0


async def test_secrets_stored_plain_before_the_upgrade_are_sealed_at_start(
    pg_admin_url: str, mqtt_url: str, tmp_path: Path, receivers: Callable[..., Receiver]
) -> None:
    """A database from before sealing (migrations up to 0010) with a plain secret: the next
    start migrates and seals it (the database no longer holds it), and deliveries are still
    signed with it."""
    name = f"proveniq_up_{tmp_path.name[-20:].lower().replace('-', '_')}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    url = make_conninfo(pg_admin_url, dbname=name)
    receiver = receivers()
    secret = "whsec_" + base64.b64encode(b"s" * 32).decode()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for mig in db.migrations():
                if mig.version < 11:
                    conn.execute(mig.sql)  # type: ignore[arg-type]
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (mig.version, mig.name),
                    )
            conn.execute("INSERT INTO tenants (id, name) VALUES (%s, %s)", (TENANT, TENANT))
            conn.execute(
                "INSERT INTO webhook_endpoints (id, tenant_id, url, events, secret)"
                " VALUES (gen_random_uuid(), %s, %s, %s, %s)",
                (TENANT, receiver.url, ["ops.alert"], secret),
            )
        async with core_running(url, mqtt_url, tmp_path, webhook_allow_private=True) as core:
            async with db.connection(core.pool) as conn:
                cur = await conn.execute("SELECT secret FROM webhook_endpoints")
                [stored] = [r["secret"] for r in await cur.fetchall()]
            assert stored.startswith("fernet:") and secret not in stored
            async with db.transaction(core.pool) as conn:
                await emit(conn, TENANT, "ops.alert", {"n": 1})
            await wait_for_requests(receiver, 1)
        assert [p["data"] for p in receiver.verified(secret)] == [{"n": 1}]
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
