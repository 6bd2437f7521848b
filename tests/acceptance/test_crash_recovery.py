"""kill -9 of a real Core process mid-registration: another process finishes the saga.

Every process here is real: ``proveniq simulate`` runs slow lockers (so a step can be caught
in flight) and writes what the devices hold to a file; ``proveniq serve`` processes share
one PostgreSQL and one broker. After each crash: the asset ends in a legal state, the
lockers hold exactly the links the ledger records, and ``proveniq audit verify`` passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from proveniq_core.embedded import free_port
from proveniq_core.locker.simulator import fleet_specs
from tests.conftest import seed_lockers, unique_prefix
from tests.helpers import eventually

pytestmark = pytest.mark.slow

TENANT = "acme"
LOCKER_MS = 1500  # every command takes this long: long enough to kill a process inside one
LEASE_S = 1.0
LINKED = ("linked", "verified", "rejected", "manual_review")


@dataclass
class Proc:
    proc: asyncio.subprocess.Process
    log: Path

    async def wait_for_line(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log.read_text():
            assert self.proc.returncode is None, f"exited: {self.log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"no {text!r}: {self.log.read_text()[-2000:]}"
            await asyncio.sleep(0.05)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), 30)


@dataclass
class Cluster:
    """What one test runs against: a database, a broker, a fleet process, a key."""

    tmp: Path
    database_url: str
    mqtt_url: str
    refs: list[str]
    key: str
    state_file: Path
    procs: list[Proc]

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROVENIQ_")}
        return env | {
            "PROVENIQ_DATABASE_URL": self.database_url,
            "PROVENIQ_MQTT_URL": self.mqtt_url,
            "PROVENIQ_SAGA_LEASE": str(LEASE_S),
            "PROVENIQ_POLL_INTERVAL": "0.1",
            "PROVENIQ_LINK_SYNC_BUDGET_MS": "10000",
            "PROVENIQ_WORKERS": "0",  # --role all: one process, the one killed
            **extra,
        }

    async def spawn(self, name: str, *args: str, **env: str) -> Proc:
        log = self.tmp / f"{name}.log"
        with log.open("w") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "proveniq_core",
                *args,
                env=self.env(PROVENIQ_HOME=str(self.tmp / name), **env),
                stdout=out,
                stderr=subprocess_stdout(),
            )
        started = Proc(proc, log)
        self.procs.append(started)
        return started

    async def serve(self, name: str, role: str) -> tuple[Proc, str]:
        port = free_port()
        proc = await self.spawn(name, "serve", PROVENIQ_ROLE=role, PROVENIQ_PORT=str(port))
        await proc.wait_for_line("worker ready" if role == "worker" else "Ctrl-C stops")
        return proc, f"http://127.0.0.1:{port}"

    async def query(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        async with await psycopg.AsyncConnection.connect(
            self.database_url, autocommit=True, row_factory=dict_row
        ) as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchall() if cur.description else []

    async def until(
        self, check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0
    ) -> None:
        await eventually(check, what, timeout)

    async def step_log(self, saga_id: str) -> list[tuple[str, str, int, str, str]]:
        rows = await self.query(
            "SELECT s.name, s.phase, s.attempt, s.status, s.owner FROM saga_steps s "
            "WHERE saga_id = %s ORDER BY started_at, attempt",
            saga_id,
        )
        return [(r["name"], r["phase"], r["attempt"], r["status"], r["owner"]) for r in rows]


def subprocess_stdout() -> int:
    return asyncio.subprocess.STDOUT


@contextlib.asynccontextmanager
async def cluster(database_url: str, mqtt_url: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    prefix = unique_prefix()
    specs = fleet_specs(2, prefix)
    key = await seed_lockers(database_url, TENANT, specs, "crash test")
    c = Cluster(
        tmp_path, database_url, mqtt_url, [s.ref for s in specs], key, tmp_path / "fleet.json", []
    )
    sim = await c.spawn(
        "sim",
        "simulate",
        "--mqtt-url",
        mqtt_url,
        "--lockers",
        "2",
        "--prefix",
        prefix,
        "--profile",
        f"{LOCKER_MS}:{LOCKER_MS}",
        "--state-file",
        str(c.state_file),
    )
    await sim.wait_for_line("lockers")
    await c.until(lambda: asyncio.to_thread(c.state_file.exists), "the fleet's state file")
    try:
        yield c
    finally:
        for proc in reversed(c.procs):
            if proc.proc.returncode is None:
                proc.kill9()
                await proc.proc.wait()


async def post_asset(base: str, c: Cluster) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as http:
        return await http.post(
            f"{base}/api/assets",
            headers={"Authorization": f"Bearer {c.key}"},
            json={"name": "Crash test watch", "category": "watch", "lockerRef": c.refs[0]},
        )


async def running_step(c: Cluster, name: str, phase: str = "execute") -> bool:
    rows = await c.query(
        "SELECT 1 FROM saga_steps WHERE name = %s AND phase = %s AND status = 'running'",
        name,
        phase,
    )
    return bool(rows)


async def device_received(c: Cluster, command: str) -> bool:
    """Whether the first locker has received a ``command`` (the fleet's state file)."""
    state = json.loads(await asyncio.to_thread(c.state_file.read_text))
    return bool(state[c.refs[0]]["received"].get(command, 0))


async def the_saga(c: Cluster) -> dict[str, Any]:
    (saga,) = await c.query("SELECT * FROM sagas WHERE name = 'asset_registration'")
    return saga


async def settle_and_check(c: Cluster, sim_stop: bool = True) -> dict[str, Any]:
    """Stop the fleet, then compare what the devices hold with what the ledger records."""
    sim = c.procs[0]
    assert await sim.stop() == 0
    state = json.loads(c.state_file.read_text())
    held = {asset for ref in c.refs for asset in state[ref]["links"]}
    recorded = {
        str(r["id"])
        for r in await c.query(
            "SELECT id FROM assets WHERE status = ANY(%s::asset_status[])", list(LINKED)
        )
    }
    assert held == recorded, "the lockers hold exactly the links the ledger records"
    audit = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proveniq_core",
        "audit",
        "verify",
        env=c.env(PROVENIQ_HOME=str(c.tmp / "audit")),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await audit.communicate()
    assert audit.returncode == 0, out.decode()
    return dict(state[c.refs[0]])


async def test_worker_killed_while_a_step_is_in_flight(
    database_url: str, mqtt_url: str, tmp_path: Path
) -> None:
    """kill -9 during the locker link → a worker process resumes it with the same commandId:
    the device links once, the asset ends linked (then verified)."""
    async with cluster(database_url, mqtt_url, tmp_path) as c:
        first, base = await c.serve("first", "all")
        request = asyncio.create_task(post_asset(base, c))
        await c.until(lambda: running_step(c, "link_locker"), "the link to be in flight")
        # The step is recorded as begun before the command goes out: kill only once the
        # device has the command (it answers LOCKER_MS later, to a process then gone).
        await c.until(lambda: device_received(c, "link"), "the device to receive the link")
        first.kill9()
        with pytest.raises(httpx.TransportError):
            await request
        _, heir = await c.serve("second", "worker")
        saga = await the_saga(c)

        async def linked() -> bool:
            rows = await c.query("SELECT status FROM assets")
            return rows[0]["status"] in ("linked", "verified")

        await c.until(linked, "the heir to finish the saga")
        await c.until(
            lambda: _status_is(c, saga["id"], "completed"), "the saga to complete", timeout=10
        )
        log = await c.step_log(saga["id"])
        first_owner = log[0][4]
        assert [entry[:4] for entry in log] == [
            ("create_ledger_record", "execute", 1, "completed"),
            ("link_locker", "execute", 1, "interrupted"),
            ("link_locker", "execute", 2, "completed"),
            ("update_status", "execute", 1, "completed"),
            ("queue_verification", "execute", 1, "completed"),
        ]
        assert log[2][4] != first_owner  # finished by the other process
        device = await settle_and_check(c)
        assert device["received"]["link"] == 2  # sent again after the crash…
        assert device["commands"]["link"] == 1  # …but carried out once
        async with httpx.AsyncClient(base_url=heir) as probe:  # the worker is scraped too
            assert (await probe.get("/readyz")).status_code == 200
            scraped = (await probe.get("/metrics")).text
        completed = 'core_sagas_total{outcome="completed",saga="asset_registration"} 1.0'
        assert completed in scraped


async def test_worker_killed_between_the_link_and_the_status_update(
    database_url: str, mqtt_url: str, tmp_path: Path
) -> None:
    """kill -9 after the device answered the link, while the status update (whose commit
    also records the link's end) waits on a lock → the heir finds the link unrecorded and
    sends it again with the same commandId: the device answers from its record and links
    once; the status update and the verification are the heir's."""
    async with cluster(database_url, mqtt_url, tmp_path) as c:
        first, base = await c.serve("first", "all")
        request = asyncio.create_task(post_asset(base, c))

        async def asset_exists() -> bool:
            return bool(await c.query("SELECT 1 FROM assets"))

        await c.until(asset_exists, "the ledger record")
        # Hold the asset row: update_status, the step after the link, will wait on it.
        async with await psycopg.AsyncConnection.connect(database_url) as blocker:
            await blocker.execute("SELECT * FROM assets FOR UPDATE")
            saga = await the_saga(c)

            async def waiting_on_the_row() -> bool:
                return bool(
                    await c.query(
                        "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock'"
                    )
                )

            await c.until(waiting_on_the_row, "the status update to wait on the asset row")
            assert [e[:4] for e in await c.step_log(saga["id"])] == [
                ("create_ledger_record", "execute", 1, "completed"),
                ("link_locker", "execute", 1, "running"),  # answered, not yet recorded
            ]
            first.kill9()
            await blocker.rollback()
        with pytest.raises(httpx.TransportError):
            await request
        await c.serve("second", "worker")
        await c.until(lambda: _status_is(c, saga["id"], "completed"), "the saga to complete")
        log = await c.step_log(saga["id"])
        assert [e[:4] for e in log] == [
            ("create_ledger_record", "execute", 1, "completed"),
            ("link_locker", "execute", 1, "interrupted"),
            ("link_locker", "execute", 2, "completed"),
            ("update_status", "execute", 1, "completed"),
            ("queue_verification", "execute", 1, "completed"),
        ]
        assert log[0][4] != log[2][4] == log[3][4]  # the heir's from the second link on
        (asset,) = await c.query("SELECT status FROM assets")
        assert asset["status"] in ("linked", "verified")
        device = await settle_and_check(c)
        assert device["received"]["link"] == 2  # asked again after the crash…
        assert device["commands"]["link"] == 1  # …and carried out once


async def test_worker_killed_during_compensation(
    database_url: str, mqtt_url: str, tmp_path: Path
) -> None:
    """The last step fails, compensation starts, kill -9 during the unlink → another process
    completes the compensation: the asset ends compensated and no locker holds it."""
    async with cluster(database_url, mqtt_url, tmp_path) as c:
        # The ledger refuses the verification row: queue_verification fails for good.
        await c.query("ALTER TABLE verifications ADD CONSTRAINT refuse_all CHECK (false) NOT VALID")
        first, base = await c.serve("first", "all")
        request = asyncio.create_task(post_asset(base, c))
        await c.until(
            lambda: running_step(c, "link_locker", "compensate"), "the unlink to be in flight"
        )
        first.kill9()
        with pytest.raises(httpx.TransportError):
            await request
        await c.serve("second", "worker")
        saga = await the_saga(c)
        await c.until(lambda: _status_is(c, saga["id"], "compensated"), "the compensation")
        log = await c.step_log(saga["id"])
        assert [e[:4] for e in log] == [
            ("create_ledger_record", "execute", 1, "completed"),
            ("link_locker", "execute", 1, "completed"),
            ("update_status", "execute", 1, "completed"),
            ("queue_verification", "execute", 1, "failed"),
            ("update_status", "compensate", 1, "completed"),
            ("link_locker", "compensate", 1, "interrupted"),
            ("link_locker", "compensate", 2, "completed"),
            ("create_ledger_record", "compensate", 1, "completed"),
        ]
        (asset,) = await c.query("SELECT status FROM assets")
        assert asset["status"] == "compensated"
        device = await settle_and_check(c)
        assert device["links"] == {}
        assert device["received"]["unlink"] == 2 and device["commands"]["unlink"] == 1


async def _status_is(c: Cluster, saga_id: Any, status: str) -> bool:
    rows = await c.query("SELECT status FROM sagas WHERE id = %s", saga_id)
    return bool(rows) and rows[0]["status"] == status
