"""deploy/compose.yaml's topology without containers: one ``serve --role api`` and two
``serve --role worker`` processes, an authenticated Mosquitto and ``proveniq simulate``.

The image cannot be built here, so this starts what the compose file starts, as processes on
this machine: a Mosquitto of the test's own, run from ``deploy/mosquitto/mosquitto.conf``
(only its port, password file and data dir changed) with the two users the compose file
creates; a fresh PostgreSQL database; the three Core processes sharing one data dir (the
compose file's ``proveniq-home`` volume); the lockers registered through the API by
``deploy/register_lockers.py``, as the compose file's ``register-lockers`` job does.

Registrations made while the fleet is not yet connected are deferred (202) and completed by
the workers once the lockers come online: their saga timelines in ``GET /api/ops/sagas/{id}``
name a worker process as the owner of the link. Every asset ends verified, and only the
workers count verifications; the API serves the evidence photos the workers stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proveniq_core.embedded import free_port
from tests.conftest import port_open, unique_prefix
from tests.helpers import eventually

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
LOCKERS = 3
DEFERRED = 4  # registered before the fleet connects
LINKED_NOW = 3  # registered once it is online
WAIT_S = 60.0  # a bound on every wait, so a regression fails instead of hanging
CORE_USER, CORE_PASSWORD = "core", "core-test-secret"
SIM_USER, SIM_PASSWORD = "sim", "sim-test-secret"


@dataclass
class Proc:
    name: str
    proc: asyncio.subprocess.Process
    log: Path

    async def wait_for_line(self, text: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while text not in self.log.read_text():
            assert self.proc.returncode is None, f"{self.name} exited: {self.tail()}"
            assert time.monotonic() < deadline, f"{self.name}: no {text!r}: {self.tail()}"
            await asyncio.sleep(0.05)

    def tail(self) -> str:
        return self.log.read_text()[-3000:]

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), 30)


@dataclass
class Topology:
    tmp: Path
    database_url: str
    broker_port: int
    home: Path
    procs: list[Proc] = field(default_factory=list)

    def mqtt_url(self, user: str, password: str) -> str:
        return f"mqtt://{user}:{password}@127.0.0.1:{self.broker_port}"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROVENIQ_")}
        return env | extra

    async def spawn(self, name: str, *argv: str, **env: str) -> Proc:
        log = self.tmp / f"{name}.log"
        with log.open("w") as out:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                env=self.env(**env),
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                cwd=self.tmp,
            )
        started = Proc(name, proc, log)
        self.procs.append(started)
        return started

    async def serve(self, name: str, role: str) -> tuple[Proc, str]:
        """``proveniq serve --role ROLE`` as compose runs it: the shared data dir, the
        database, the broker with the ``core`` user's credentials."""
        port = free_port()
        proc = await self.spawn(
            name,
            sys.executable,
            "-m",
            "proveniq_core",
            "serve",
            "--role",
            role,
            PROVENIQ_HOME=str(self.home),
            PROVENIQ_DATABASE_URL=self.database_url,
            PROVENIQ_MQTT_URL=self.mqtt_url(CORE_USER, CORE_PASSWORD),
            PROVENIQ_PORT=str(port),
            PROVENIQ_POLL_INTERVAL="0.2",
            # Short, so a registration to a locker not yet connected answers 202 quickly.
            PROVENIQ_LINK_SYNC_BUDGET_MS="500",
        )
        return proc, f"http://127.0.0.1:{port}"


def mosquitto_conf(tmp: Path, port: int) -> Path:
    """deploy/mosquitto/mosquitto.conf with this test's port, password file, data dir and
    user; every other setting (no anonymous clients, TCP_NODELAY, persistence) as shipped."""
    passwd = tmp / "mosquitto-passwd"
    for i, (user, password) in enumerate(((CORE_USER, CORE_PASSWORD), (SIM_USER, SIM_PASSWORD))):
        create = ["-c"] if i == 0 else []
        subprocess.run(
            ["mosquitto_passwd", *create, "-b", str(passwd), user, password],
            check=True,
            capture_output=True,
        )
    passwd.chmod(0o600)
    data = tmp / "mosquitto-data"
    data.mkdir()
    text = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    replaced = {
        r"^password_file .*$": f"password_file {passwd}",
        r"^listener 1883$": f"listener {port} 127.0.0.1",
        r"^persistence_location .*$": f"persistence_location {data}/",
    }
    for pattern, line in replaced.items():
        text, n = re.subn(pattern, line, text, flags=re.MULTILINE)
        assert n == 1, pattern
    assert re.search(r"^allow_anonymous false$", text, re.MULTILINE)
    assert re.search(r"^set_tcp_nodelay true$", text, re.MULTILINE)
    # Started as root, Mosquitto drops to the user "mosquitto", who cannot read the test's
    # files: it runs as whoever runs the test.
    text += f"\nuser {pwd.getpwuid(os.getuid()).pw_name}\n"
    conf = tmp / "mosquitto.conf"
    conf.write_text(text)
    return conf


@contextlib.asynccontextmanager
async def topology(database_url: str, tmp_path: Path) -> AsyncIterator[Topology]:
    mosquitto = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    assert mosquitto and shutil.which("mosquitto_passwd"), (
        "Mosquitto (Debian's mosquitto package) runs the broker of this test"
    )
    t = Topology(tmp_path, database_url, free_port(), tmp_path / "proveniq-home")
    try:
        broker = await t.spawn(
            "mosquitto", mosquitto, "-c", str(mosquitto_conf(tmp_path, t.broker_port))
        )

        async def listening() -> bool:
            assert broker.proc.returncode is None, broker.tail()
            return await asyncio.to_thread(port_open, "127.0.0.1", t.broker_port)

        await eventually(listening, "the broker", within=WAIT_S)
        yield t
    finally:
        for proc in reversed(t.procs):
            if proc.proc.returncode is None:
                proc.proc.kill()
                await proc.proc.wait()


def scrape(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def owner_pid(owner: str | None) -> int | None:
    """The pid in a saga owner (``host:pid:nonce``)."""
    return int(owner.split(":")[1]) if owner else None


async def test_one_api_and_two_workers_register_link_and_verify(
    database_url: str, tmp_path: Path
) -> None:
    """Assets registered through the API are linked and verified, the deferred links by the
    worker processes, against an authenticated broker with the compose file's settings."""
    async with topology(database_url, tmp_path) as t:
        # The broker refuses anonymous clients: the credentials in the URLs are what let
        # Core and the simulator in.
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client("127.0.0.1", t.broker_port, identifier="anonymous"):
                pass

        (api, base), (w1, w1_url), (w2, w2_url) = await asyncio.gather(
            t.serve("api", "api"), t.serve("worker-1", "worker"), t.serve("worker-2", "worker")
        )
        await asyncio.gather(
            api.wait_for_line("Ctrl-C stops"),
            w1.wait_for_line("worker ready"),
            w2.wait_for_line("worker ready"),
        )
        workers = {w1.proc.pid: w1, w2.proc.pid: w2}

        # The compose file's register-lockers job, with the bootstrap key the processes share.
        prefix = unique_prefix()
        registrar = await t.spawn(
            "register-lockers",
            sys.executable,
            str(DEPLOY / "register_lockers.py"),
            "--url",
            base,
            "--lockers",
            str(LOCKERS),
            "--prefix",
            prefix,
            "--key-file",
            str(t.home / "bootstrap-key"),
            "--wait",
            str(WAIT_S),
        )
        assert await asyncio.wait_for(registrar.proc.wait(), WAIT_S) == 0, registrar.tail()
        assert f"{LOCKERS} lockers registered" in registrar.tail()
        key = (t.home / "bootstrap-key").read_text().strip()
        refs = [f"{prefix}{i:03d}" for i in range(1, LOCKERS + 1)]

        async with httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as http:

            async def register(i: int) -> httpx.Response:
                body = {"name": f"Watch {i}", "category": "watch", "lockerRef": refs[i % LOCKERS]}
                return await http.post("/api/assets", json=body)

            # No locker is connected yet: every link is deferred, nothing fails.
            early = [await register(i) for i in range(DEFERRED)]
            assert [r.status_code for r in early] == [202] * DEFERRED, [r.text for r in early]
            assert {r.json()["status"] for r in early} == {"pending_link"}

            sim = await t.spawn(
                "simulate",
                sys.executable,
                "-m",
                "proveniq_core",
                "simulate",
                "--lockers",
                str(LOCKERS),
                "--prefix",
                prefix,
                "--profile",
                "instant",
                PROVENIQ_MQTT_URL=t.mqtt_url(SIM_USER, SIM_PASSWORD),
            )
            await sim.wait_for_line("lockers")

            async def statuses(ids: list[str]) -> list[str]:
                return [(await http.get(f"/api/assets/{a}")).json()["status"] for a in ids]

            early_ids = [r.json()["assetId"] for r in early]

            async def all_verified(ids: list[str]) -> bool:
                return await statuses(ids) == ["verified"] * len(ids)

            await eventually(
                lambda: all_verified(early_ids), "the deferred assets to be verified", within=WAIT_S
            )

            # With the fleet online, the API links in the request: 201 linked.
            late = [await register(i) for i in range(LINKED_NOW)]
            assert [r.status_code for r in late] == [201] * LINKED_NOW, [r.text for r in late]
            late_ids = [r.json()["assetId"] for r in late]
            await eventually(
                lambda: all_verified(late_ids), "the linked assets to be verified", within=WAIT_S
            )

            # Who did what: the saga timelines name the processes.
            link_owners = []
            for asset_id in early_ids + late_ids:
                asset = (await http.get(f"/api/assets/{asset_id}")).json()
                saga = (await http.get(f"/api/ops/sagas/{asset['sagaId']}")).json()
                assert saga["status"] == "completed"
                steps = {
                    s["step"]: s
                    for s in saga["steps"]
                    if s["phase"] == "execute" and s["status"] == "completed"
                }
                assert owner_pid(steps["create_ledger_record"]["owner"]) == api.proc.pid
                link_owners.append(owner_pid(steps["link_locker"]["owner"]))
            # The deferred links were completed by the workers, the others in the request.
            assert set(link_owners[:DEFERRED]) <= workers.keys()
            assert set(link_owners[DEFERRED:]) == {api.proc.pid}

            # The API serves the photos the workers collected (the shared data dir).
            evidence = (await http.get(f"/api/assets/{early_ids[0]}/evidence")).json()["items"]
            assert evidence
            photo = await http.get(evidence[0]["links"]["content"])
            assert photo.status_code == 200 and photo.content

        # Every process is a scrape target, connected to the broker; only workers verify.
        verified = {}
        async with httpx.AsyncClient(timeout=10) as anon:
            for proc, url in ((api, base), (w1, w1_url), (w2, w2_url)):
                samples = scrape((await anon.get(f"{url}/metrics")).text)
                assert samples[("core_mqtt_connected", frozenset())] == 1, proc.name
                assert samples[("core_db_pool_max", frozenset())] >= 1, proc.name
                outcome = frozenset({("outcome", "verified")})
                verified[proc.name] = samples.get(("core_verification_outcomes_total", outcome), 0)
        assert verified["api"] == 0
        assert verified["worker-1"] + verified["worker-2"] == DEFERRED + LINKED_NOW

        audit = await t.spawn(
            "audit",
            sys.executable,
            "-m",
            "proveniq_core",
            "audit",
            "verify",
            PROVENIQ_DATABASE_URL=t.database_url,
            PROVENIQ_HOME=str(t.tmp / "audit-home"),
        )
        assert await asyncio.wait_for(audit.proc.wait(), WAIT_S) == 0, audit.tail()
        assert "audit chain intact" in audit.tail()

        for proc in (sim, api, w1, w2):
            assert await proc.stop() == 0, f"{proc.name}: {proc.tail()}"
        print(  # the report names which worker linked what
            "deferred links by worker:",
            {workers[pid].name: link_owners[:DEFERRED].count(pid) for pid in workers},
        )
