"""Browser tests of the console: Debian's Chromium driven by Playwright against a real
``proveniq serve`` (the machine's PostgreSQL and MQTT broker) and a real ``proveniq
simulate`` fleet whose fault injection makes the review items and failed links.

One service and one fleet serve the module; each test gets a tenant of its own with
two lockers of the fleet, so what one test does never shows in another's queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import psycopg
import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, async_playwright
from psycopg.conninfo import make_conninfo

from proveniq_core import db
from proveniq_core.embedded import free_port
from proveniq_core.ledger import keys
from proveniq_core.locker.gateway import parse_mqtt_url
from proveniq_core.locker.simulator import SimulatedLocker, fleet_specs
from tests.conftest import unique_prefix

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LOCKERS = 24
START_TIMEOUT = 60.0
VIEWPORT = {"width": 1280, "height": 800}


async def eventually(check: Callable[[], Awaitable[Any]], what: str, within: float = 20.0) -> Any:
    """Wait for ``check()`` to return something truthy, up to ``within`` seconds."""
    deadline = time.monotonic() + within
    while not (result := await check()):
        assert time.monotonic() < deadline, f"not in time: {what}"
        await asyncio.sleep(0.1)
    return result


class Proc:
    """A ``python -m proveniq_core`` subprocess, its output in a log file."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc, self.log = proc, log

    async def wait_for(self, text: str) -> None:
        async def printed() -> bool:
            assert self.proc.returncode is None, f"exited: {self.log.read_text()[-3000:]}"
            return text in self.log.read_text()

        await eventually(printed, repr(text), START_TIMEOUT)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def spawn(tmp: Path, name: str, *args: str, **env: str) -> Proc:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PROVENIQ_")}
    log = tmp / f"{name}.log"
    with log.open("w") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "proveniq_core",
            *args,
            env=clean | {"PROVENIQ_HOME": str(tmp / name), **env},
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    return Proc(proc, log)


@dataclass
class Tenant:
    """A tenant of its own for one test: an admin key and two lockers of the fleet."""

    id: str
    admin: str
    refs: list[str]
    stack: Stack

    def api(self, key: str | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.stack.url,
            headers={"Authorization": f"Bearer {key or self.admin}"},
            timeout=30,
        )

    async def key(self, name: str, scopes: list[str] | tuple[str, ...]) -> str:
        """A key for a person of this tenant, with their name."""
        return await keys.create_key(self.stack.pool, self.id, scopes, name=name)


@dataclass
class Stack:
    """The service, the fleet and a pool on their database."""

    url: str
    faults_url: str
    database_url: str
    pool: db.Pool
    specs: list[SimulatedLocker]
    _next: Iterator[int] = field(default_factory=itertools.count)

    async def tenant(self) -> Tenant:
        tenant_id = f"t{uuid.uuid4().hex[:10]}"
        admin = await keys.create_key(self.pool, tenant_id, keys.SCOPES, name="Test Admin")
        specs = [self.specs[next(self._next)] for _ in range(2)]
        async with httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {admin}"}
        ) as http:
            for spec in specs:
                body = {"lockerRef": spec.ref, "site": {"lat": spec.lat, "lon": spec.lon}}
                created = await http.post("/api/lockers", json=body)
                assert created.status_code == 201, created.text
        return Tenant(tenant_id, admin, [s.ref for s in specs], self)

    async def fault(self, **rule: Any) -> None:
        async with httpx.AsyncClient(base_url=self.faults_url) as http:
            assert (await http.post("/sim/faults", json=rule)).status_code == 201

    async def clear_faults(self, ref: str) -> None:
        async with httpx.AsyncClient(base_url=self.faults_url) as http:
            cleared = await http.delete("/sim/faults", params={"lockerRef": ref})
            assert cleared.status_code == 200


async def forget_fleet(mqtt_url: str, specs: list[SimulatedLocker]) -> None:
    """Clear the retained statuses the fleet leaves on the shared broker, so no other
    test's gateway hears of these lockers."""
    host, port = parse_mqtt_url(mqtt_url)
    async with aiomqtt.Client(
        host, port, identifier=f"console-janitor-{uuid.uuid4().hex[:8]}"
    ) as c:
        for spec in specs:
            await c.publish(f"proveniq/lockers/{spec.ref}/status", b"", qos=1, retain=True)


@pytest.fixture(scope="module")
def browser_database_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for the module's service."""
    name = f"proveniq_b_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template_db}")
    yield make_conninfo(pg_admin_url, dbname=name)
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest_asyncio.fixture(scope="module")
async def stack(
    browser_database_url: str, mqtt_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """``proveniq simulate`` (a fleet with fault injection) and ``proveniq serve`` on it,
    for this module's tests: the fleet is gone (and forgotten by the broker) after them."""
    tmp = tmp_path_factory.mktemp("console")
    specs = fleet_specs(LOCKERS, unique_prefix())
    faults_port, port = free_port(), free_port()
    common = {"PROVENIQ_DATABASE_URL": browser_database_url, "PROVENIQ_MQTT_URL": mqtt_url}
    common["PROVENIQ_WORKERS"] = "0"  # one serve process, whatever the machine's cores
    procs: list[Proc] = []
    pool = await db.open_pool(browser_database_url, min_size=1, max_size=4)
    try:
        sim = await spawn(
            tmp,
            "sim",
            "simulate",
            "--lockers",
            str(LOCKERS),
            "--prefix",
            specs[0].ref.removesuffix("001"),
            "--profile",
            "instant",
            "--faults-port",
            str(faults_port),
            **common,
        )
        procs.append(sim)
        await sim.wait_for("fault injection")
        serve = await spawn(
            tmp,
            "serve",
            "serve",
            **common,
            PROVENIQ_PORT=str(port),
            PROVENIQ_POLL_INTERVAL="0.2",
            PROVENIQ_RETRY_BASE="3600",  # entries wait for the operator in these tests
            PROVENIQ_WEBHOOK_ALLOW_PRIVATE="true",  # the tests' subscriber is on this host
        )
        procs.append(serve)
        await serve.wait_for("Ctrl-C stops")
        yield Stack(
            f"http://127.0.0.1:{port}",
            f"http://127.0.0.1:{faults_port}",
            browser_database_url,
            pool,
            specs,
        )
    finally:
        for proc in reversed(procs):
            await proc.stop()
        await pool.close()
        await forget_fleet(mqtt_url, specs)


@pytest_asyncio.fixture(scope="session")
async def chromium() -> AsyncIterator[Browser]:
    """Debian's Chromium (never a downloaded browser build)."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest_asyncio.fixture
async def new_context(chromium: Browser) -> AsyncIterator[Callable[[], Awaitable[BrowserContext]]]:
    """Open browser contexts (separate cookie jars: separate people) at 1280x800."""
    opened: list[BrowserContext] = []

    async def make() -> BrowserContext:
        context = await chromium.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
        opened.append(context)
        return context

    yield make
    for context in opened:
        with contextlib.suppress(Exception):
            await context.close()


async def sign_in(page: Page, base: str, key: str, path: str = "/console") -> None:
    """Sign in with the keyboard: the key field has the focus; type it and press Enter."""
    await page.goto(f"{base}{path}")
    assert "/console/login" in page.url
    # Typing before the autofocus has landed loses keystrokes on a busy machine.
    await page.wait_for_function("document.activeElement?.id === 'key'")
    await page.keyboard.type(key)
    async with page.expect_navigation():
        await page.keyboard.press("Enter")
    assert "/console/login" not in page.url, await page.content()


@pytest.fixture(scope="session")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tests write their screenshots (docs/ holds reviewed copies)."""
    return tmp_path_factory.mktemp("screenshots")
