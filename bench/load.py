"""Open-loop HTTP load on a real ``proveniq serve``, lockers simulated over a real broker.

    python bench/load.py --scenario instant     # (a) latency at 100/s, then max sustained rate
    python bench/load.py --scenario seed        # (b) seed latency profile + faults, 50/s, 5 min
    python bench/load.py --scenario all --out bench/load.txt
    python bench/load.py --scenario seed --seed-duration 120   # (b) shortened
    python bench/load.py --scenario seed --seed-profile 200:2000  # (b) the SLO run

Each scenario starts its own processes on a fresh database (``proveniq_load_<pid>_<name>``
on ``--database-url``'s server, dropped afterwards) and the broker at ``--mqtt-url``:

- ``proveniq simulate`` with a unique locker prefix and ``--faults-port`` (fault injection
  over loopback HTTP, not the shared MQTT control topic);
- ``proveniq serve --database-url … --mqtt-url … --port … --workers N`` (N = ``--workers``,
  0 by default: one process does everything; N: serve is the API process and starts N
  worker processes itself); the lockers are registered through ``POST /api/lockers`` with
  the simulator's sites.

The generator is open-loop: request *i* is sent at ``t0 + i / rate`` whatever the earlier
ones are doing, and its latency is counted from that scheduled instant, so a stalled
server or client shows up in the figures instead of slowing the arrivals down
(no coordinated omission). CPU of the serve, simulate and generator processes comes from
psutil over each phase ("serve" is the serve process and the worker processes it started).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psutil
import psycopg

from proveniq_core.embedded import free_port
from proveniq_core.locker.simulator import fleet_specs

VENV_BIN = Path(sys.executable).parent
OUT: list[str] = []


def say(line: str = "") -> None:
    print(line, flush=True)


def record(line: str = "") -> None:
    say(line)
    OUT.append(line)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# --- processes -------------------------------------------------------------------------


@dataclass
class Stack:
    base: str
    key: str
    serve: psutil.Process
    sim: psutil.Process
    worker_targets: list[str]  # host:port of each worker's /metrics, from serve's banner
    faults_url: str
    refs: list[str]
    db_url: str

    def processes(self) -> list[psutil.Process]:
        """serve and the worker processes it runs now (``serve --workers N``)."""
        return [self.serve, *self.serve.children(recursive=True)]


@contextlib.contextmanager
def database(server_url: str, name: str) -> Iterator[str]:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    info = psycopg.conninfo.conninfo_to_dict(server_url) | {"dbname": name}
    try:
        yield psycopg.conninfo.make_conninfo(**info)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.asynccontextmanager
async def stack(
    args: argparse.Namespace,
    name: str,
    lockers: int,
    profile: str,
    db_prefix: str = "proveniq_load",
) -> AsyncIterator[Stack]:
    prefix = f"ld{os.getpid()}{name[0]}-"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVENIQ_")}
    env["PROVENIQ_LOG_LEVEL"] = "warning"
    serve_env = dict(item.split("=", 1) for item in args.serve_env)
    with (
        database(args.database_url, f"{db_prefix}_{os.getpid()}_{name}") as db_url,
        tempfile.TemporaryDirectory() as home,
        open(args.serve_log or os.devnull, "a") as serve_log,  # noqa: ASYNC230 (start-up)
    ):
        faults_port, port = free_port(), free_port()
        sim = subprocess.Popen(  # noqa: ASYNC220 (start-up, before any load)
            [
                str(VENV_BIN / "proveniq"),
                "simulate",
                "--mqtt-url",
                args.mqtt_url,
                "--lockers",
                str(lockers),
                "--prefix",
                prefix,
                "--profile",
                profile,
                "--seed",
                "7",
                "--faults-port",
                str(faults_port),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        serve = subprocess.Popen(  # noqa: ASYNC220
            [
                str(VENV_BIN / "proveniq"),
                "serve",
                "--home",
                home,
                "--database-url",
                db_url,
                "--mqtt-url",
                args.mqtt_url,
                "--port",
                str(port),
                "--workers",
                str(args.workers),
            ],
            env=env | serve_env,
            stdout=subprocess.PIPE,
            stderr=serve_log,
            text=True,
        )
        try:
            assert serve.stdout is not None
            key = ""
            worker_targets = []
            t0 = time.perf_counter()
            for line in serve.stdout:
                if line.startswith("Admin API key:"):
                    key = line.split()[-1]
                if line.startswith("  worker "):  # "  worker 1: pid 42, http://…/metrics"
                    worker_targets.append(line.split()[-1].split("/")[2])
                if line.startswith("Ctrl-C"):
                    break
            if not key:
                raise SystemExit(f"serve exited ({serve.poll()}) before its banner")
            if len(worker_targets) != args.workers:
                raise SystemExit(f"serve named {worker_targets} as its {args.workers} workers")
            say(
                f"[{name}] serve ready in {time.perf_counter() - t0:.1f} s on port {port},"
                f" {args.workers} worker process(es)"
            )
            base = f"http://127.0.0.1:{port}"
            specs = fleet_specs(lockers, prefix)
            async with httpx.AsyncClient(
                base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30
            ) as http:
                for spec in specs:
                    r = await http.post(
                        "/api/lockers",
                        json={
                            "lockerRef": spec.ref,
                            "site": {"lat": spec.lat, "lon": spec.lon},
                            "geofenceM": 100.0,
                        },
                    )
                    r.raise_for_status()
                deadline = time.monotonic() + 30
                while True:
                    online, cursor = 0, None
                    while True:
                        params: dict[str, Any] = {"limit": 200}
                        if cursor:
                            params["cursor"] = cursor
                        page = (await http.get("/api/lockers", params=params)).json()
                        online += sum(1 for item in page["items"] if item["online"])
                        cursor = page["nextCursor"]
                        if not cursor:
                            break
                    if online == lockers:
                        break
                    if time.monotonic() > deadline:
                        raise SystemExit(f"only {online}/{lockers} lockers online after 30 s")
                    await asyncio.sleep(0.5)
            say(f"[{name}] {lockers} lockers {specs[0].ref}…{specs[-1].ref} online ({profile})")
            yield Stack(
                base=base,
                key=key,
                serve=psutil.Process(serve.pid),
                sim=psutil.Process(sim.pid),
                worker_targets=worker_targets,
                faults_url=f"http://127.0.0.1:{faults_port}/sim/faults",
                refs=[s.ref for s in specs],
                db_url=db_url,
            )
        finally:
            stop(serve)  # and so its workers
            stop(sim)
            if serve.stdout:
                serve.stdout.close()


# --- a real Prometheus scraping serve --------------------------------------------------

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "alerts.yml"


@contextlib.contextmanager
def prometheus(targets: dict[str, list[str]], interval: int) -> Iterator[str | None]:
    """Debian's ``prometheus`` scraping ``targets`` (host:port, by the ``role`` label they get,
    as deploy/prometheus/prometheus.yml labels them) every ``interval`` seconds and evaluating
    ``deploy/prometheus/alerts.yml``; yields its URL, or None when not installed."""
    binary = shutil.which("prometheus")
    if binary is None:
        yield None
        return
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "prometheus.yml"
        conf.write_text(
            f"global:\n  scrape_interval: {interval}s\n  evaluation_interval: {interval}s\n"
            f"rule_files: ['{RULES}']\n"
            "scrape_configs:\n  - job_name: proveniq-core\n    static_configs:\n"
            + "".join(
                f"      - {{targets: {hosts!r}, labels: {{role: {role}}}}}\n"
                for role, hosts in targets.items()
                if hosts
            )
        )
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={conf}",
                f"--storage.tsdb.path={tmp}/data",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("prometheus did not become ready in 30 s")
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            proc.wait(10)


async def prom_query(http: httpx.AsyncClient, query: str) -> list[dict[str, Any]]:
    r = await http.get("/api/v1/query", params={"query": query})
    r.raise_for_status()
    result: list[dict[str, Any]] = r.json()["data"]["result"]
    return result


async def prometheus_report(http: httpx.AsyncClient, seconds: float) -> list[str]:
    """What Prometheus (``http``'s base URL) saw over the last ``seconds``: the SLO percentiles
    from the histogram, and every alert rule's state, with those that were pending or firing
    at any evaluation."""
    lines: list[str] = []
    window = f"{max(30, round(seconds))}s"
    sel = 'subsystem="api", operation="POST /api/assets"'
    lines.append(f"Prometheus (scraping serve's /metrics, evaluating {RULES.name}):")
    up = await prom_query(http, 'sum(up{job="proveniq-core"})')
    samples = await prom_query(http, f"sum(count_over_time(up[{window}]))")
    lines.append(
        f"  targets up: {up[0]['value'][1] if up else '?'};"
        f" scrapes in the window: {samples[0]['value'][1] if samples else 0}"
    )
    quantiles = []
    for q in (0.5, 0.95, 0.99):
        res = await prom_query(
            http,
            f"histogram_quantile({q}, sum by (le) "
            f"(rate(core_orchestration_latency_seconds_bucket{{{sel}}}[{window}])))",
        )
        value = float(res[0]["value"][1]) * 1000 if res else float("nan")
        quantiles.append(f"P{round(q * 100)} {value:.0f} ms")
    lines.append(
        f"  POST /api/assets over {window}, interpolated within the seed's buckets: "
        + ", ".join(quantiles)
    )
    groups = (await http.get("/api/v1/rules", params={"type": "alert"})).json()
    rules = [r for g in groups["data"]["groups"] for r in g["rules"]]
    seen = await prom_query(
        http, f"max by (alertname, alertstate) (max_over_time(ALERTS[{window}]))"
    )
    during = {(s["metric"]["alertname"], s["metric"]["alertstate"]) for s in seen}
    lines.append(
        "  alert rules (state at the end; pending/firing at any evaluation in the window):"
    )
    for rule in rules:
        name = rule["name"]
        states = [st for st in ("pending", "firing") if (name, st) in during]
        lines.append(f"    {name}: {rule['state']}; during the run: {', '.join(states) or 'never'}")
    return lines


# --- the open-loop generator -----------------------------------------------------------


@dataclass
class Phase:
    label: str
    rate: float
    duration: float
    results: list[tuple[str, float]] = field(default_factory=list)  # (status, ms)
    # per answer: (status, its latency less the locker wait its Server-Timing header reported)
    core: list[tuple[str, float]] = field(default_factory=list)
    lag_ms: list[float] = field(default_factory=list)
    backlog_at_end: int = 0
    drain_s: float = 0.0
    done_in_window: int = 0
    cpu: dict[str, float] = field(default_factory=dict)

    def ms(self, status: str | None = None) -> list[float]:
        return [m for s, m in self.results if status is None or s == status]

    def core_ms(self, status: str | None = None) -> list[float]:
        return [m for s, m in self.core if status is None or s == status]

    @property
    def statuses(self) -> Counter[str]:
        return Counter(s for s, _ in self.results)

    @property
    def ok(self) -> int:
        return sum(n for s, n in self.statuses.items() if s in ("201", "202"))


class CpuMeter:
    def __init__(self, procs: dict[str, list[psutil.Process]], backends: str) -> None:
        """``backends``: also count the PostgreSQL backends connected to this database."""
        self.procs = procs
        pg = [
            p
            for p in psutil.process_iter(["cmdline"])
            if f" {backends} " in " ".join(p.info["cmdline"] or []) + " "
        ]
        self.pg = {p: self._cpu(p) for p in pg}
        self.t0 = time.monotonic()
        self.c0 = {k: sum(map(self._cpu, ps)) for k, ps in procs.items()}
        self.m0 = psutil.cpu_times()

    @staticmethod
    def _cpu(p: psutil.Process) -> float:
        try:
            t = p.cpu_times()
            return t.user + t.system
        except psutil.Error:
            return float("nan")

    def read(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        out = {
            k: (sum(map(self._cpu, ps)) - self.c0[k]) / wall * 100 for k, ps in self.procs.items()
        }
        out["postgres"] = sum(self._cpu(p) - c for p, c in self.pg.items() if p.is_running())
        out["postgres"] *= 100 / wall
        m1 = psutil.cpu_times()
        busy = sum(
            getattr(m1, f) - getattr(self.m0, f)
            for f in ("user", "system", "nice", "irq", "softirq", "steal")
        )
        out["machine"] = busy / wall * 100  # of (cores x 100)
        out["load1"] = os.getloadavg()[0]
        return out


async def run_phase(
    st: Stack, label: str, rate: float, duration: float, *, connections: int
) -> Phase:
    phase = Phase(label, rate, duration)
    loop = asyncio.get_running_loop()
    n = max(1, round(rate * duration))
    inflight: set[asyncio.Task[None]] = set()
    serve = st.processes()
    procs = {"serve": serve, "simulate": [st.sim], "generator": [psutil.Process()]}
    if len(serve) > 1:  # serve --workers N: its API process apart too
        procs["api"] = [st.serve]
    meter = CpuMeter(
        procs,
        backends=st.db_url.split("dbname=")[1].split()[0],
    )

    async def one(i: int, at: float) -> None:
        body = {
            "name": f"load {label} {i}",
            "category": "bench",
            "lockerRef": st.refs[i % len(st.refs)],
        }
        locker_ms = None
        try:
            async with session.post("/api/assets", json=body) as r:
                await r.read()
                status = str(r.status)
                locker_ms = locker_wait(r.headers.get("Server-Timing", ""))
        except (aiohttp.ClientError, TimeoutError) as exc:
            status = type(exc).__name__
        ms = (loop.time() - at) * 1000
        phase.results.append((status, ms))
        if locker_ms is not None:
            phase.core.append((status, ms - locker_ms))

    async def progress() -> None:
        seen = 0
        while True:
            await asyncio.sleep(5)
            recent = phase.results[seen:]
            seen = len(phase.results)
            lat = [m for _, m in recent]
            codes = dict(Counter(s for s, _ in recent))
            say(
                f"  [{label}] t={loop.time() - t0:5.1f}s sent {sent:6d}"
                f" done {len(phase.results):6d}"
                f" in-flight {len(inflight):5d} | last 5 s: p50 {pct(lat, 50):7.1f} ms"
                f" p99 {pct(lat, 99):7.1f} ms {codes}"
            )

    # aiohttp for the load itself: on 2 cores httpx spent as much CPU as the server did.
    # At most ``connections`` at once, like a real client's pool; a request waiting for one
    # still counts the wait (latency runs from its scheduled instant).
    session = aiohttp.ClientSession(
        base_url=st.base,
        headers={"Authorization": f"Bearer {st.key}"},
        timeout=aiohttp.ClientTimeout(total=None, sock_read=60),
        # keep-alive under uvicorn's 5 s, so an idle connection is not reused as it closes
        connector=aiohttp.TCPConnector(limit=connections, keepalive_timeout=3),
    )
    t0 = loop.time() + 0.05
    sent = 0
    reporter = asyncio.create_task(progress())
    try:
        for i in range(n):
            at = t0 + i / rate
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            phase.lag_ms.append(max(0.0, (loop.time() - at) * 1000))
            task = asyncio.create_task(one(i, at))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
            sent += 1
        # The arrival window ends one interval after the last send.
        end = t0 + n / rate
        if end > loop.time():
            await asyncio.sleep(end - loop.time())
        phase.backlog_at_end = len(inflight)
        phase.done_in_window = len(phase.results)
        phase.cpu = meter.read()
        t_end = loop.time()
        if inflight:
            await asyncio.wait(set(inflight), timeout=120)
        phase.drain_s = loop.time() - t_end
    finally:
        reporter.cancel()
        await session.close()
    return phase


def locker_wait(server_timing: str) -> float:
    """The ``locker;dur=…`` of a ``Server-Timing`` header in ms (0 when Core did not wait)."""
    for part in server_timing.split(","):
        name, _, dur = part.strip().partition(";dur=")
        if name == "locker":
            return float(dur)
    return 0.0


def phase_row(p: Phase) -> str:
    lat = p.ms()
    codes = ", ".join(f"{k}×{v}" for k, v in sorted(p.statuses.items()))
    api = f" (API {p.cpu['api']:.0f})" if "api" in p.cpu else ""
    cpu = (
        " / ".join(
            f"{p.cpu.get(k, float('nan')):.0f}" + (api if k == "serve" else "")
            for k in ("serve", "postgres", "simulate", "generator", "machine")
        )
        + f" | {p.cpu.get('load1', float('nan')):.1f}"
    )
    return (
        f"| {p.rate:.0f} | {p.duration:.0f} | {len(p.results)}"
        f" | {p.done_in_window / p.duration:.0f}"
        f" | {pct(lat, 50):.1f} | {pct(lat, 95):.1f} | {pct(lat, 99):.1f} | {max(lat):.1f}"
        f" | {pct(p.core_ms(), 50):.1f} / {pct(p.core_ms(), 99):.1f}"
        f" | {pct(p.lag_ms, 99):.1f} | {p.backlog_at_end} | {codes} | {cpu} |"
    )


PHASE_HEADER = (
    "| rate/s | s | requests | done/s in window | p50 ms | p95 ms | p99 ms | max ms"
    " | Core-added p50 / p99 ms | send lag p99 ms | in flight at end | statuses"
    " | CPU % serve (API process) / pg / sim / gen / machine (of 200) | load avg |\n"
    "|" + " ---: |" * 11 + " --- | --- | ---: |"
)
STEP_HEADER = (
    PHASE_HEADER.replace(" | load avg |\n", " | load avg | verified after, s |\n") + " ---: |"
)


# --- the ledger ------------------------------------------------------------------------


def ledger_state(db_url: str) -> dict[str, Any]:
    with psycopg.connect(db_url) as conn:
        by_status = dict(
            conn.execute("SELECT status::text, count(*) FROM assets GROUP BY 1").fetchall()
        )
        pl_with_entry = conn.execute(
            """SELECT count(*) FROM assets a WHERE a.status = 'pending_link' AND EXISTS (
                 SELECT 1 FROM retry_queue q WHERE q.asset_id = a.id
                 AND q.status IN ('pending', 'retrying', 'exhausted'))"""
        ).fetchone()[0]
        sagas = dict(
            conn.execute(
                "SELECT name || ':' || status, count(*) FROM sagas GROUP BY 1 ORDER BY 1"
            ).fetchall()
        )
        retry = dict(conn.execute("SELECT status, count(*) FROM retry_queue GROUP BY 1").fetchall())
        alerts = dict(conn.execute("SELECT code, count(*) FROM ops_alerts GROUP BY 1").fetchall())
        commits = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()[0]
    return {
        "assets": by_status,
        "total": sum(by_status.values()),
        "pending_link_with_entry": pl_with_entry,
        "sagas": sagas,
        "retry_queue": retry,
        "alerts": alerts,
        "commits": commits,
    }


async def drain(db_url: str, timeout: float, label: str) -> tuple[dict[str, Any], float]:
    """Wait until no asset is mid-flight (pending, or linked awaiting verification)."""
    t0 = time.monotonic()
    while True:
        state = await asyncio.to_thread(ledger_state, db_url)
        a = state["assets"]
        busy = a.get("pending", 0) + a.get("linked", 0)
        busy += a.get("pending_link", 0) - state["pending_link_with_entry"]
        elapsed = time.monotonic() - t0
        if busy == 0 or elapsed > timeout:
            return state, elapsed
        say(f"  [{label}] drain t={elapsed:5.1f}s assets {a} (busy {busy})")
        await asyncio.sleep(5)


def record_ledger(state: dict[str, Any], answered_2xx: int, other: Counter[str]) -> bool:
    a = state["assets"]
    record(
        f"Ledger: {state['total']} assets: " + ", ".join(f"{k} {v}" for k, v in sorted(a.items()))
    )
    record(
        f"  pending_link with an open retry-queue entry: {state['pending_link_with_entry']}"
        f" of {a.get('pending_link', 0)}; retry_queue {state['retry_queue']}"
    )
    record(f"  sagas {state['sagas']}")
    if state["total"]:
        record(
            f"  PostgreSQL commits in the database (whole run, all sources):"
            f" {state['commits']} = {state['commits'] / state['total']:.1f} per asset"
        )
    if state["alerts"]:
        record(f"  ops alerts {state['alerts']}")
    settled = {"verified", "linked", "manual_review", "rejected", "link_failed"}
    unsettled = sum(v for k, v in a.items() if k not in settled and k != "pending_link")
    unsettled += a.get("pending_link", 0) - state["pending_link_with_entry"]
    lost = answered_2xx != state["total"]
    record(
        f"  2xx answers {answered_2xx} vs assets in the ledger {state['total']}"
        f" ({'MISMATCH' if lost else 'none lost'}); non-2xx answers {dict(other) or 0};"
        f" assets neither settled nor escalated: {unsettled}"
    )
    return not lost and unsettled == 0


# --- scenarios -------------------------------------------------------------------------


def client(st: Stack) -> httpx.AsyncClient:
    """For the control calls (fault rules, the fleet); the load itself uses aiohttp."""
    return httpx.AsyncClient(
        base_url=st.base, headers={"Authorization": f"Bearer {st.key}"}, timeout=60
    )


async def scenario_instant(args: argparse.Namespace) -> None:
    async with stack(args, "instant", args.lockers, "instant") as st:
        record("## (a) instant lockers")
        record()
        record(
            f"{args.lockers} simulated lockers, profile instant; serve, simulate and generator"
            " share"
            " the 2 cores with PostgreSQL and Mosquitto."
        )
        warm = await run_phase(st, "warmup", 50, 3, connections=args.connections)
        await drain(st.db_url, args.drain_timeout, "instant")
        say(f"[instant] latency phase: {args.rate}/s for {args.duration} s")
        lat = await run_phase(st, "latency", args.rate, args.duration, connections=args.connections)
        _, lat_drain = await drain(st.db_url, args.drain_timeout, "instant")
        record()
        record(f"### Latency at {args.rate:.0f}/s for {args.duration:.0f} s")
        record()
        record(PHASE_HEADER)
        record(phase_row(lat))
        p99 = pct(lat.core_ms(), 99)
        record()
        record(
            f"Core-added p99 {p99:.1f} ms (p50 {pct(lat.core_ms(), 50):.1f} ms) vs target p99 <= 20"
            f" ms: {'MET' if p99 <= 20 else 'NOT MET'}. Core-added is each answer's latency, as"
            " the generator saw it, less the locker wait (broker round trip and simulator) that"
            " its Server-Timing header reported; end to end p50"
            f" {pct(lat.ms(), 50):.1f} ms, p99 {pct(lat.ms(), 99):.1f} ms."
        )
        record(f"Verification caught up {lat_drain:.0f} s after the phase's last answer.")
        record()
        record(f"### Maximum sustained rate ({args.step_duration:.0f} s per step)")
        record()
        record(
            "A step is sustained when every answer is 2xx, p99 <= "
            f"{args.max_p99:.0f} ms, and the in-flight backlog at the end of the arrival"
            " window is under one second of arrivals. Each step starts once the previous"
            " one's verifications are done (the last column: seconds that took)."
        )
        record()
        record(STEP_HEADER)
        best = 0.0
        steps = []
        for rate in args.steps:
            say(f"[instant] step {rate}/s for {args.step_duration} s")
            p = await run_phase(
                st, f"step{rate:.0f}", rate, args.step_duration, connections=args.connections
            )
            steps.append(p)
            _, caught_up = await drain(st.db_url, args.drain_timeout, "instant")
            record(f"{phase_row(p)} {caught_up:.0f} |")
            errors = len(p.results) - p.ok
            good = errors == 0 and pct(p.ms(), 99) <= args.max_p99 and p.backlog_at_end < rate
            if not good:
                say(f"[instant] {rate}/s not sustained; stopping the ramp")
                break
            best = rate
        record()
        record(
            f"Highest sustained rate: {best:.0f} registrations/s vs target >= 300/s:"
            f" {'MET' if best >= 300 else 'NOT MET'}"
        )
        record()
        state, waited = await drain(st.db_url, args.drain_timeout, "instant")
        record(f"After the ramp (drained in {waited:.0f} s):")
        phases = [warm, lat, *steps]
        answered = sum(p.ok for p in phases)
        other = Counter(s for p in phases for s, _ in p.results if s not in ("201", "202"))
        record_ledger(state, answered, other)
        record()


async def scenario_seed(args: argparse.Namespace) -> None:
    n = args.seed_lockers
    offline = max(1, round(n * args.offline_pct / 100))
    profile = args.seed_profile
    described = (
        "seed (lognormal, p50 500 ms, p99 5 s): the degraded run"
        if profile == "seed"
        else f"{profile} ms (lognormal p50:p99)"
        + (": the seed's happy-path budget, the SLO run" if profile == "200:2000" else "")
    )
    async with stack(args, "seed", n, profile) as st, client(st) as http:
        # Offline devices: the first command each receives is lost and it drops off the
        # broker for the whole run; timeouts: a flaky rule drops a share of all commands.
        rules = [
            {"lockerRef": ref, "fault": "offline", "seconds": args.seed_duration + 3600}
            for ref in st.refs[:: max(1, n // offline)][:offline]
        ]
        rules.append({"lockerRef": "*", "fault": "flaky", "probability": args.timeout_pct / 100})
        for rule in rules:
            r = await http.post(st.faults_url, json=rule)
            r.raise_for_status()
        record(f"## (b) profile {profile}, {args.seed_rate:.0f}/s for {args.seed_duration:.0f} s")
        record()
        record(
            f"{n} simulated lockers, profile {described}; faults via"
            f" the simulator's /sim/faults: {offline} locker(s) offline for the run"
            f" ({offline / n * 100:.1f} % of devices), and a flaky rule on '*' dropping"
            f" {args.timeout_pct:g} % of all commands (link and collect_evidence), which Core sees"
            " as a command timeout. Sync link budget 2 s, command timeout 30 s (defaults)"
            + (f"; serve environment: {', '.join(args.serve_env)}." if args.serve_env else ".")
        )
        record()
        api = st.base.removeprefix("http://")
        targets = (
            {"api": [api], "worker": st.worker_targets} if st.worker_targets else {"all": [api]}
        )
        with prometheus(targets, args.scrape_interval) as prom:
            if prom is None:
                say("[seed] prometheus is not installed: no scraping (apt-get install prometheus)")
            p = await run_phase(
                st, "seed", args.seed_rate, args.seed_duration, connections=args.connections
            )
            prom_lines = []
            if prom is not None:
                await asyncio.sleep(args.scrape_interval * 2)  # the last scrape and evaluation
                async with httpx.AsyncClient(base_url=prom, timeout=10) as prom_http:
                    prom_lines = await prometheus_report(prom_http, args.seed_duration)
        faults = (await http.get(st.faults_url)).json()["items"]
        record(PHASE_HEADER)
        record(phase_row(p))
        record()
        record("| answers | count | P50 ms | P95 ms | P99 ms | max ms | Core-added p50/95/99 ms |")
        record("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        groups = [("all", None), *((s, s) for s in sorted(p.statuses))]
        for name, status in groups:
            ms, core = p.ms(status), p.core_ms(status)
            record(
                f"| {name} | {len(ms)} | {pct(ms, 50):.0f} | {pct(ms, 95):.0f} | {pct(ms, 99):.0f}"
                f" | {max(ms):.0f} | {' / '.join(f'{pct(core, q):.0f}' for q in (50, 95, 99))} |"
            )
        record()
        ms = p.ms()
        checks = [("P50", 50, 500), ("P95", 95, 1500), ("P99", 99, 3000)]
        record(
            "SLO (all answers): "
            + "; ".join(
                f"{k} {pct(ms, q):.0f} ms < {lim} ms {'MET' if pct(ms, q) < lim else 'NOT MET'}"
                for k, q, lim in checks
            )
        )
        for line in prom_lines:
            record(line)
        record(
            "Faults hit (rule: commands seen): "
            + ", ".join(f"{f['fault']} {f['lockerRef']}: seen {f['seen']}" for f in faults)
        )
        record()
        state, waited = await drain(st.db_url, args.drain_timeout, "seed")
        record(f"After the run ({waited:.0f} s of drain, limit {args.drain_timeout:.0f} s):")
        other = Counter(s for s, _ in p.results if s not in ("201", "202"))
        ok = record_ledger(state, p.ok, other)
        record(f"  every asset settled or escalated, none lost: {'YES' if ok else 'NO'}")
        record()


def header(args: argparse.Namespace) -> None:
    def ver(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "?"

    with psycopg.connect(args.database_url) as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0]
    mosq = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout.split("\n")[0]
    script = f"bench/{Path(sys.argv[0]).name}"
    record(f"# {script} — {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")
    record()
    record(
        f"Machine: {platform.node()}, {os.cpu_count()} cores, {platform.platform()};"
        f" load average at start {os.getloadavg()[0]:.2f}"
    )
    record(
        f"Python {platform.python_version()}; proveniq-core {ver('proveniq-core')}, httpx"
        f" {ver('httpx')}, uvicorn {ver('uvicorn')}, psycopg {ver('psycopg')}, aiomqtt"
        f" {ver('aiomqtt')}; PostgreSQL {pg}; {mosq.strip() or 'mosquitto'}"
    )
    record(f"Command: python {script} {' '.join(sys.argv[1:])}")
    record(
        f"serve --workers {args.workers}: the API process and the {args.workers} worker"
        " process(es) it starts (CPU 'serve' is their sum)"
        if args.workers
        else "serve --workers 0: one process (the API and every worker)"
    )
    record()


class Mosquitto:
    """A Mosquitto of our own on a free port, with ``set_tcp_nodelay true``; ``stop()`` and
    ``start()`` again on the same port (an outage: nothing retained survives it)."""

    def __init__(self, conf_dir: str) -> None:
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.conf = Path(conf_dir) / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
            "persistence false\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        if self.proc.poll() is not None:
            raise SystemExit(f"mosquitto exited ({self.proc.returncode}); port {self.port} taken?")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@contextlib.contextmanager
def private_broker() -> Iterator[Mosquitto]:
    """A running ``Mosquitto``, terminated on the way out."""
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(tmp)
        broker.start()
        try:
            yield broker
        finally:
            broker.stop()


async def amain(args: argparse.Namespace) -> None:
    header(args)
    if args.mqtt_url is None:
        with private_broker() as broker:
            args.mqtt_url = broker.url
            record(f"Broker: a private Mosquitto with set_tcp_nodelay true at {broker.url}")
            record()
            await scenarios(args)
    else:
        record(f"Broker: {args.mqtt_url} (as configured there)")
        record()
        await scenarios(args)


async def scenarios(args: argparse.Namespace) -> None:
    if args.scenario in ("instant", "all"):
        await scenario_instant(args)
    if args.scenario in ("seed", "all"):
        await scenario_seed(args)


def add_serve_options(ap: argparse.ArgumentParser) -> None:
    """The options of the serve processes a bench starts (shared with drain.py)."""
    ap.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument(
        "--workers",
        type=int,
        default=0,
        help="serve --workers N: 0, one serve process does everything; N, serve is the API"
        " process and starts N worker processes (CPU 'serve' is their sum)",
    )
    ap.add_argument(
        "--serve-env",
        action="append",
        default=[],
        metavar="PROVENIQ_X=V",
        help="extra environment for serve (repeatable)",
    )
    ap.add_argument(
        "--serve-log",
        type=Path,
        metavar="FILE",
        help="append serve's log (stderr) here; with --serve-env PROVENIQ_LOG_LEVEL=info for more",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", choices=["instant", "seed", "all"], default="all")
    ap.add_argument(
        "--mqtt-url",
        help="broker to use; unset: start a private Mosquitto with set_tcp_nodelay true",
    )
    ap.add_argument("--lockers", type=int, default=50, help="(a) fleet size")
    ap.add_argument("--rate", type=float, default=100, help="(a) latency phase rate/s")
    ap.add_argument("--duration", type=float, default=30, help="(a) latency phase seconds")
    ap.add_argument(
        "--steps",
        type=lambda s: [float(x) for x in s.split(",")],
        default=[25, 50, 75, 100, 125, 150, 200, 300, 400],
        help="(a) ramp rates/s, comma-separated",
    )
    ap.add_argument("--step-duration", type=float, default=15)
    ap.add_argument("--max-p99", type=float, default=1000, help="(a) p99 limit of a sustained step")
    ap.add_argument("--seed-lockers", type=int, default=200, help="(b) fleet size")
    ap.add_argument("--seed-rate", type=float, default=50)
    ap.add_argument("--seed-duration", type=float, default=300)
    ap.add_argument(
        "--seed-profile",
        default="seed",
        help="(b) the fleet's latency: seed (p50 500 ms, p99 5 s: the degraded run) or P50:P99"
        " in ms (200:2000: the seed's happy-path budget, the SLO run)",
    )
    ap.add_argument("--timeout-pct", type=float, default=1.0, help="(b) commands dropped, %%")
    ap.add_argument("--offline-pct", type=float, default=0.5, help="(b) devices offline, %%")
    ap.add_argument("--drain-timeout", type=float, default=150)
    ap.add_argument(
        "--scrape-interval", type=int, default=5, help="(b) Prometheus scrape/evaluation, s"
    )
    ap.add_argument(
        "--connections", type=int, default=256, help="the generator's connection pool size"
    )
    add_serve_options(ap)
    ap.add_argument("--out", type=Path, help="write the results here (markdown)")
    args = ap.parse_args()
    try:
        asyncio.run(amain(args))
    finally:
        if args.out and OUT:
            args.out.write_text("\n".join(OUT) + "\n")


if __name__ == "__main__":
    main()
