"""The MQTT broker stops under a running Core and comes back (docs/architecture.md §3).

Every part is a real process: a broker this test owns (Mosquitto on a free port; amqtt
where Mosquitto is not installed or ``PROVENIQ_TEST_MQTT=embedded``), ``proveniq simulate``
with a state file and ``proveniq serve`` on the shared PostgreSQL. While the broker is
down, registrations answer 202 ``pending_link`` with a retry-queue entry and never a 5xx;
when it returns, the gateway and the lockers reconnect, the lockers announce themselves
online, and every deferred link completes by itself, long before its backoff timer. One
link is in flight when the broker stops: the device carries it out while cut off, its
reply is lost, and the retry gets the device's first answer instead of a second link.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg.rows import dict_row

from proveniq_core.embedded import free_port
from proveniq_core.locker.simulator import fleet_specs
from tests.conftest import seed_lockers, unique_prefix
from tests.helpers import eventually

TENANT = "acme"
LOCKERS = 3
DEFERRED_PER_LOCKER = 2
SLOW_LINK_MS = 2000  # the in-flight link: long enough to stop the broker under it
LINKED = ("linked", "verified", "rejected", "manual_review")
DEFERRED_REASONS = ("E_LOCKER_UNREACHABLE", "E_LOCKER_TIMEOUT")
WAIT_S = 60.0  # a bound on every wait, so a regression fails instead of hanging

# Where Mosquitto is not installed, the same embedded broker ``serve`` uses, in its own
# process so that the test can stop it like any broker.
_AMQTT = """
import asyncio, sys
from proveniq_core.embedded import EmbeddedBroker

async def main() -> None:
    await EmbeddedBroker(None, port=int(sys.argv[1])).start()
    await asyncio.Event().wait()

asyncio.run(main())
"""


def _mosquitto() -> str | None:
    """The Mosquitto binary, unless ``PROVENIQ_TEST_MQTT=embedded`` asks for amqtt."""
    if os.environ.get("PROVENIQ_TEST_MQTT") == "embedded":
        return None
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class PrivateBroker:
    """An MQTT broker process on a fixed loopback port, stopped and restarted at will."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.log = tmp / "broker.log"
        self.args: list[str]
        mosquitto = _mosquitto()
        if mosquitto is not None:
            conf = tmp / "mosquitto.conf"
            conf.write_text(
                f"listener {self.port} 127.0.0.1\n"
                "allow_anonymous true\n"
                "persistence false\n"  # a restart forgets retained presence, as a crash would
                "log_dest stdout\n"
            )
            self.args = [mosquitto, "-c", str(conf)]
        else:
            self.args = [sys.executable, "-c", _AMQTT, str(self.port)]
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("a") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *self.args, stdout=out, stderr=asyncio.subprocess.STDOUT
            )

        async def listening() -> bool:
            assert self.proc is not None and self.proc.returncode is None, self.log.read_text()
            return await asyncio.to_thread(_accepts, self.port)

        await eventually(listening, f"the broker on port {self.port}", within=WAIT_S)

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)


@dataclass
class Proc:
    proc: asyncio.subprocess.Process
    log: Path

    async def wait_for_line(self, text: str) -> None:
        async def printed() -> bool:
            assert self.proc.returncode is None, f"exited: {self.log.read_text()[-3000:]}"
            return text in self.log.read_text()

        await eventually(printed, repr(text), within=WAIT_S)

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), 30)


@dataclass
class Stack:
    """A private broker, a simulated fleet process and a Core process against it."""

    tmp: Path
    database_url: str
    broker: PrivateBroker
    refs: list[str]
    key: str
    state_file: Path
    faults_port: int
    procs: list[Proc] = field(default_factory=list)
    base: str = ""

    async def spawn(self, name: str, *args: str, **env: str) -> Proc:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("PROVENIQ_")}
        log = self.tmp / f"{name}.log"
        with log.open("w") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "proveniq_core",
                *args,
                env=clean
                | {
                    "PROVENIQ_HOME": str(self.tmp / name),
                    "PROVENIQ_DATABASE_URL": self.database_url,
                    "PROVENIQ_MQTT_URL": self.broker.url,
                    "PROVENIQ_POLL_INTERVAL": "0.2",
                    "PROVENIQ_WORKERS": "0",  # one Core process, whatever the machine's cores
                    **env,
                },
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        started = Proc(proc, log)
        self.procs.append(started)
        return started

    async def query(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        async with await psycopg.AsyncConnection.connect(
            self.database_url, autocommit=True, row_factory=dict_row
        ) as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchall() if cur.description else []

    def fleet(self) -> dict[str, Any]:
        """What the devices hold and counted, as the simulator last wrote it."""
        state: dict[str, Any] = json.loads(self.state_file.read_text())
        return state

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base, headers={"Authorization": f"Bearer {self.key}"}, timeout=60
        )


@contextlib.asynccontextmanager
async def stack(database_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    prefix = unique_prefix()
    specs = fleet_specs(LOCKERS, prefix)
    key = await seed_lockers(database_url, TENANT, specs, "broker-down test")
    broker = PrivateBroker(tmp_path)
    refs = [x.ref for x in specs]
    s = Stack(tmp_path, database_url, broker, refs, key, tmp_path / "fleet.json", free_port())
    await broker.start()
    try:
        sim = await s.spawn(
            "sim",
            "simulate",
            "--lockers",
            str(LOCKERS),
            "--prefix",
            prefix,
            "--profile",
            "instant",
            "--state-file",
            str(s.state_file),
            "--faults-port",
            str(s.faults_port),
        )
        await eventually(
            lambda: asyncio.to_thread(s.state_file.exists), "the fleet's state file", within=WAIT_S
        )
        await sim.wait_for_line("fault injection")
        port = free_port()
        core = await s.spawn("core", "serve", PROVENIQ_PORT=str(port))
        await core.wait_for_line("Ctrl-C stops")
        s.base = f"http://127.0.0.1:{port}"
        yield s
    finally:
        for proc in reversed(s.procs):
            if proc.proc.returncode is None:
                proc.proc.kill()
                await proc.proc.wait()
        await broker.stop()


async def register(http: httpx.AsyncClient, ref: str) -> httpx.Response:
    return await http.post(
        "/api/assets", json={"name": "Broker outage watch", "category": "watch", "lockerRef": ref}
    )


async def test_broker_down_defers_links_and_they_drain_when_it_returns(
    database_url: str, tmp_path: Path
) -> None:
    """Broker stopped: 202 pending_link with a queue entry, no 5xx; broker back: the lockers
    come online and every deferred link completes by itself, each locker holding exactly
    the links the ledger records."""
    async with stack(database_url, tmp_path) as s, s.http() as http:
        linked_before = []
        for ref in s.refs:
            r = await register(http, ref)
            assert r.status_code == 201, r.text
            assert r.json()["status"] == "linked"
            linked_before.append(r.json()["assetId"])

        # The next link to the first locker takes SLOW_LINK_MS; stop the broker under it.
        slow = s.refs[0]
        rule = {"lockerRef": slow, "fault": "delay", "delayMs": SLOW_LINK_MS, "count": 1}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{s.faults_port}") as control:
            assert (await control.post("/sim/faults", json=rule)).status_code == 201
        in_flight = asyncio.create_task(register(http, slow))

        async def received() -> bool:
            return bool(s.fleet()[slow]["received"].get("link") == 2)

        await eventually(received, "the slow link to reach the device", within=WAIT_S)
        await s.broker.stop()

        deferred: dict[str, str] = {}  # assetId -> lockerRef
        reasons = []

        def check_deferred(r: httpx.Response, ref: str) -> None:
            assert r.status_code == 202, r.text
            body = r.json()
            assert set(body) == {"assetId", "status", "retryAt", "reason"}, body
            assert body["status"] == "pending_link"
            assert body["reason"] in DEFERRED_REASONS
            assert datetime.fromisoformat(body["retryAt"]) > datetime.now(UTC)  # not held
            deferred[body["assetId"]] = ref
            reasons.append(body["reason"])

        check_deferred(await in_flight, slow)
        slow_asset = next(iter(deferred))
        for _ in range(DEFERRED_PER_LOCKER):
            for ref in s.refs:
                check_deferred(await register(http, ref), ref)

        async def carried_out_while_cut_off() -> bool:
            return slow_asset in s.fleet()[slow]["links"]

        # The outage lasts until the device has linked the slow asset; its reply is lost.
        await eventually(
            carried_out_while_cut_off, "the device to carry out the slow link", within=WAIT_S
        )
        ready = await http.get("/readyz")
        assert ready.status_code == 200, ready.text  # the ledger is up: degraded, not down
        assert ready.json()["checks"]["broker"] == "degraded"
        for asset_id, ref in deferred.items():
            r = await http.get(f"/api/assets/{asset_id}")
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "pending_link"
            assert r.json()["lockerId"] is None
            (entry,) = await s.query("SELECT * FROM retry_queue WHERE asset_id = %s", asset_id)
            assert (entry["locker_ref"], entry["operation"]) == (ref, "link")
            assert (entry["status"], entry["retry_count"]) == ("pending", 0)
            assert entry["last_error"]["code"] in DEFERRED_REASONS
        earliest_timer = min(
            e["next_retry_at"] for e in await s.query("SELECT next_retry_at FROM retry_queue")
        )

        await s.broker.start()
        back_at = time.monotonic()

        async def drained() -> bool:
            for asset_id in deferred:
                r = await http.get(f"/api/assets/{asset_id}")
                assert r.status_code == 200, r.text
                if r.json()["status"] not in LINKED:
                    return False
            return True

        await eventually(drained, "the deferred links to drain", within=WAIT_S)
        drain_s = time.monotonic() - back_at
        print(
            f"{len(deferred)} deferred links ({sorted(set(reasons))}) drained "
            f"{drain_s:.2f} s after the broker returned"
        )
        # Woken by the lockers' presence, not by the backoff timer.
        assert datetime.now(UTC) < earliest_timer

        async def broker_ok() -> bool:
            r = await http.get("/readyz")
            return r.status_code == 200 and r.json()["checks"]["broker"] == "ok"

        await eventually(broker_ok, "the gateway to report the broker connected", within=WAIT_S)
        entries = await s.query("SELECT status FROM retry_queue")
        assert [e["status"] for e in entries] == ["resolved"] * len(deferred)
        sagas = await s.query("SELECT status FROM sagas WHERE name = 'asset_registration'")
        assert [x["status"] for x in sagas] == ["completed"] * (len(deferred) + LOCKERS)

        ledger: dict[str, dict[str, str]] = {ref: {} for ref in s.refs}
        for asset_id in [*linked_before, *deferred]:
            view = (await http.get(f"/api/assets/{asset_id}")).json()
            assert view["status"] in LINKED
            ledger[view["lockerRef"]][asset_id] = view["lockerId"]

        assert await s.procs[0].stop() == 0  # the fleet writes its final state as it stops
        fleet = s.fleet()
        for ref in s.refs:
            assert fleet[ref]["links"] == ledger[ref], f"{ref} holds what the ledger records"
            assert fleet[ref]["commands"]["link"] == len(ledger[ref])  # each carried out once
        # The slow link was sent again after the outage and answered from the device's memory.
        assert fleet[slow]["received"]["link"] == fleet[slow]["commands"]["link"] + 1
