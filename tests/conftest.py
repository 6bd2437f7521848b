"""Session fixtures: a real PostgreSQL (the configured one, else embedded) and a real broker.

``PROVENIQ_TEST_DATABASE_URL`` names an admin conninfo (CI: the machine's server); unset, an
embedded server is started for the session. A template database is migrated once; each test
gets a fresh clone (``CREATE DATABASE … TEMPLATE``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import psycopg
import pytest
import pytest_asyncio
from psycopg.conninfo import make_conninfo

from proveniq_core import db
from proveniq_core.embedded import EmbeddedBroker, EmbeddedPostgres
from proveniq_core.ledger import assets, keys
from proveniq_core.locker.gateway import parse_mqtt_url

TEMPLATE = f"proveniq_tpl_{os.getpid()}"


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """Admin conninfo of a real PostgreSQL server."""
    url = os.environ.get("PROVENIQ_TEST_DATABASE_URL")
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="proveniq-test-pg-") as home:
        pg = EmbeddedPostgres(Path(home))
        pg.start()
        try:
            yield str(pg.admin_url)
        finally:
            pg.stop()


@pytest_asyncio.fixture(scope="session")
async def template_db(pg_admin_url: str) -> AsyncIterator[str]:
    """A database migrated once, cloned by every test."""
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
        conn.execute(f"CREATE DATABASE {TEMPLATE}")
    await db.migrate(make_conninfo(pg_admin_url, dbname=TEMPLATE))
    yield TEMPLATE
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")


@pytest.fixture
def database_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    name = f"proveniq_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template_db}")
    yield make_conninfo(pg_admin_url, dbname=name)
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest_asyncio.fixture
async def pool(database_url: str) -> AsyncIterator[db.Pool]:
    p = await db.open_pool(database_url, min_size=1, max_size=10)
    await p.wait(timeout=10)
    try:
        yield p
    finally:
        await p.close()


@pytest_asyncio.fixture(scope="session")
async def mqtt_url() -> AsyncIterator[str]:
    """A real MQTT broker: Mosquitto on 127.0.0.1:1883 when it answers, else embedded amqtt.

    ``PROVENIQ_TEST_MQTT=embedded`` forces amqtt even when 1883 is open.
    """
    if os.environ.get("PROVENIQ_TEST_MQTT") != "embedded" and port_open("127.0.0.1", 1883):
        url = "mqtt://127.0.0.1:1883"
        await forget_test_lockers(url)
        yield url
        await forget_test_lockers(url)
        return
    broker = EmbeddedBroker(None)  # open, as the Mosquitto it stands in for
    url = await broker.start()
    try:
        yield url
    finally:
        await broker.stop()


_TEST_STATUS = re.compile(r"^proveniq/lockers/t[0-9a-f]{8}-locker-[^/]+/status$")


async def forget_test_lockers(url: str, listen: float = 0.5) -> int:
    """Clear the retained ``offline`` statuses that stopped test fleets left on the shared
    broker. Every gateway receives all retained statuses when it subscribes; left to pile
    up over runs they overflow the broker's per-client queue and presence gets lost."""
    host, port = parse_mqtt_url(url)
    stale: list[str] = []
    async with aiomqtt.Client(host, port, identifier=f"test-janitor-{uuid.uuid4().hex[:8]}") as c:
        await c.subscribe("proveniq/lockers/+/status", qos=0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(listen):
                async for message in c.messages:
                    topic = message.topic.value
                    if (
                        message.retain
                        and message.payload == b"offline"
                        and _TEST_STATUS.match(topic)
                    ):
                        stale.append(topic)
        for topic in stale:
            await c.publish(topic, b"", qos=1, retain=True)
    return len(stale)


async def seed_lockers(database_url: str, tenant: str, specs: list[Any], name: str) -> str:
    """Register ``specs`` (``SimulatedLocker``s) for ``tenant``; return a new all-scopes key,
    for tests that run Core in other processes."""
    pool = await db.open_pool(database_url, min_size=1, max_size=2)
    await pool.wait()
    try:
        async with db.transaction(pool) as conn:
            await keys.ensure_tenant(conn, tenant)
            for spec in specs:
                await assets.register_locker(
                    conn,
                    tenant_id=tenant,
                    locker_ref=spec.ref,
                    lat=spec.lat,
                    lon=spec.lon,
                    geofence_m=100.0,
                    actor="test",
                )
        return await keys.create_key(pool, tenant, keys.SCOPES, name=name)
    finally:
        await pool.close()


def unique_prefix() -> str:
    """Locker refs unique to one test: the broker is shared across tests and runs."""
    return f"t{uuid.uuid4().hex[:8]}-locker-"
