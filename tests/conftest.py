"""Session fixtures: a real PostgreSQL (the configured one, else embedded) and a real broker.

``PROVENIQ_TEST_DATABASE_URL`` names an admin conninfo (CI: the machine's server); unset, an
embedded server is started for the session. A template database is migrated once; each test
gets a fresh clone (``CREATE DATABASE … TEMPLATE``).
"""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
import pytest_asyncio
from psycopg.conninfo import make_conninfo

from proveniq_core import db
from proveniq_core.embedded import EmbeddedBroker, EmbeddedPostgres

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
        yield "mqtt://127.0.0.1:1883"
        return
    broker = EmbeddedBroker()
    url = await broker.start()
    try:
        yield url
    finally:
        await broker.stop()


def unique_prefix() -> str:
    """Locker refs unique to one test: the broker is shared across tests and runs."""
    return f"t{uuid.uuid4().hex[:8]}-locker-"
