"""Recovery: links deferred while the broker is down, drained when it comes back
(docs/architecture.md §9).

    .venv-bench/bin/python bench/drain.py         # 10 000 links, 100 lockers -> bench/drain.txt
    .venv-bench/bin/python bench/drain.py --links 500 --out /tmp/d.md     # a smoke run, ~1 min
    .venv-bench/bin/python bench/drain.py --links 2000 --workers 1        # API and workers apart
    .venv-bench/bin/python bench/drain.py --serve-env PROVENIQ_SAGA_CONCURRENCY=128

Target (docs/architecture.md §9): 10 000 pending links drained in < 60 s once the broker is back.

What it does, with the helpers of bench/load.py:

1. starts a private Mosquitto (``persistence false``), a fresh database
   ``proveniq_drain_<pid>_drain`` on ``--database-url``'s server (dropped at the end, Ctrl-C
   included), ``proveniq simulate`` with ``--lockers`` instant lockers and ``proveniq serve``
   (``--workers N``: ``serve --workers N``, the API process and the N worker processes it
   starts; 0 by default, one process), and waits until
   the lockers are registered and online;
2. stops the broker and waits until every serve process's ``/readyz`` says ``degraded`` (the
   report gives how long that took: under uvloop a gateway sometimes misses the disconnect
   until its MQTT keepalive, ~2 min), then registers ``--links`` assets through
   ``POST /api/assets``, ``--concurrency`` at a time, round-robin over the lockers. Each must
   answer 202 ``pending_link`` ``E_LOCKER_UNREACHABLE``: the link fails fast (no broker,
   then the fleet circuit open), the saga parks and its retry-queue entry waits for the
   timer (``PROVENIQ_RETRY_BASE``, 300 s) or for the locker's presence;
3. starts the broker again on the same port: t = 0. Core and the simulated lockers reconnect
   on their own back-off (at most 5 s); each locker's ``online`` status makes the gateway
   call ``RetryQueue.wake_lockers`` (their parked sagas become due now) and the saga workers
   (``PROVENIQ_SAGA_CONCURRENCY`` at once per process) drive them: link command, asset
   ``linked``, entry ``resolved``, verification queued. The ledger is sampled every second
   (progress on stdout, a row every ~5 s in the report);
4. drained = every retry-queue entry ``resolved`` and every asset ``linked`` or beyond
   (verified, manual_review, rejected), before ``--timeout``; with ``--settle`` it then
   waits for the verifications too.

Reported: setup time and answers; the drain's timeline from the broker's restart, its time
and links/s; CPU of serve, its PostgreSQL backends and simulate over the drain (and per
link); from the saga log, how long the drained sagas' link attempts and remaining steps took
and how many were in flight; circuits left open; what was still open at the timeout; the
ledger (nothing lost: assets == 2xx answers == --links). Exits 1 if the drain did not
complete, an answer was not 202 pending_link, or anything was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psutil
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import (  # bench/ is not a package
    OUT,
    CpuMeter,
    Stack,
    add_serve_options,
    drain,
    header,
    ledger_state,
    pct,
    private_broker,
    record,
    record_ledger,
    say,
    stack,
)

BEYOND_LINKED = ("linked", "verified", "manual_review", "rejected")


async def readiness(st: Stack) -> list[dict[str, Any]]:
    """``/readyz`` of serve and of each worker process (``{}`` while one does not answer)."""
    urls = [st.base, *(f"http://{t}" for t in st.worker_targets)]
    out = []
    async with httpx.AsyncClient(timeout=5) as http:
        for url in urls:
            try:
                out.append((await http.get(f"{url}/readyz")).json())
            except httpx.TransportError:
                out.append({})
    return out


async def wait_broker(st: Stack, state: str, limit: float) -> float:
    """Seconds until every serve process's ``/readyz`` says the broker is ``state`` (ok or
    degraded); exits after ``limit`` seconds."""
    t0 = time.monotonic()
    while (seen := [r.get("checks", {}).get("broker") for r in await readiness(st)]) != [
        state
    ] * len(seen):
        if time.monotonic() - t0 > limit:
            raise SystemExit(f"after {limit:.0f} s serve processes report the broker as {seen}")
        await asyncio.sleep(0.2)
    return time.monotonic() - t0


async def lockers_online(http: httpx.AsyncClient) -> int:
    """Lockers the API process's gateway sees online."""
    online, cursor = 0, None
    while True:
        params: dict[str, Any] = {"limit": 200} | ({"cursor": cursor} if cursor else {})
        page = (await http.get("/api/lockers", params=params)).json()
        online += sum(1 for item in page["items"] if item["online"])
        if not (cursor := page["nextCursor"]):
            return online


async def register(st: Stack, n: int, concurrency: int) -> tuple[Counter[str], list[float]]:
    """POST n assets, ``concurrency`` at a time; (status[/reason] counts, latencies ms)."""
    answers: Counter[str] = Counter()
    ms: list[float] = []
    next_i = 0
    t0 = time.monotonic()

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal next_i
        while next_i < n:
            i, next_i = next_i, next_i + 1
            body = {
                "name": f"drain {i}",
                "category": "bench",
                "lockerRef": st.refs[i % len(st.refs)],
            }
            started = time.monotonic()
            try:
                async with session.post("/api/assets", json=body) as r:
                    doc = await r.json(content_type=None)
                    status = f"{r.status} {doc.get('status')} {doc.get('reason')}"
                    if r.status >= 300:
                        status = f"{r.status} {doc.get('error', {}).get('code')}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = type(exc).__name__
            answers[status] += 1
            ms.append((time.monotonic() - started) * 1000)
            if len(ms) % 1000 == 0:
                elapsed = time.monotonic() - t0
                say(f"  [setup] {len(ms)}/{n} in {elapsed:.0f} s ({len(ms) / elapsed:.0f}/s)")

    async with aiohttp.ClientSession(
        base_url=st.base,
        headers={"Authorization": f"Bearer {st.key}"},
        timeout=aiohttp.ClientTimeout(total=60),
        connector=aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=3),
    ) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return answers, ms


def leftovers(db_url: str) -> list[tuple[Any, ...]]:
    """Open retry-queue entries: (status, last error code, lockers, entries)."""
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            """SELECT status, last_error->>'code', count(DISTINCT locker_ref), count(*)
               FROM retry_queue WHERE status <> 'resolved' GROUP BY 1, 2 ORDER BY 4 DESC"""
        ).fetchall()


def timings(db_url: str) -> dict[str, float]:
    """From the saga log, the drained sagas (link attempt > 1): the link attempt's time
    (maintenance check, entry marked retrying, the MQTT round trip, its checkpoint), the
    saga's from that attempt's start to its end (then linked, verification queued), and how
    many were in flight on average between the first such start and the last end."""
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            """WITH d AS (
                 SELECT extract(epoch FROM st.finished_at - st.started_at) * 1000 AS link_ms,
                        extract(epoch FROM g.finished_at - st.started_at) * 1000 AS saga_ms,
                        st.started_at, g.finished_at
                 FROM saga_steps st JOIN sagas g ON g.id = st.saga_id
                 WHERE st.name = 'link_locker' AND st.phase = 'execute' AND st.attempt > 1
                   AND st.status = 'completed' AND g.status = 'completed')
               SELECT count(*),
                 percentile_cont(0.5) WITHIN GROUP (ORDER BY link_ms),
                 percentile_cont(0.99) WITHIN GROUP (ORDER BY link_ms),
                 percentile_cont(0.5) WITHIN GROUP (ORDER BY saga_ms),
                 percentile_cont(0.99) WITHIN GROUP (ORDER BY saga_ms),
                 sum(saga_ms) / 1000 / extract(epoch FROM max(finished_at) - min(started_at))
               FROM d"""
        ).fetchone()
    keys = ("sagas", "link_p50", "link_p99", "saga_p50", "saga_p99", "in_flight")
    return dict(zip(keys, (float(v or 0) for v in row), strict=True))


async def watch(st: Stack, args: argparse.Namespace, t0: float) -> dict[str, Any]:
    """Sample the ledger every second from t0 (the broker's restart) until drained or
    ``--timeout``; returns the timeline and the last state."""
    n = args.links
    seen: dict[str, float] = {}
    samples: list[str] = []  # markdown rows, one every ~5 s
    prev_linked, prev_t, row_linked, row_t = 0, 0.0, 0, 0.0
    async with httpx.AsyncClient(
        base_url=st.base, headers={"Authorization": f"Bearer {st.key}"}, timeout=5
    ) as http:
        while True:
            state = await asyncio.to_thread(ledger_state, st.db_url)
            t = time.monotonic() - t0
            ready = await readiness(st)
            online = await lockers_online(http)
            linked = sum(state["assets"].get(s, 0) for s in BEYOND_LINKED)
            resolved = state["retry_queue"].get("resolved", 0)
            if all(r.get("checks", {}).get("broker") == "ok" for r in ready):
                seen.setdefault("broker reconnected (every serve process)", t)
            if online == len(st.refs):
                seen.setdefault(f"all {online} lockers online (API process)", t)
            if linked:
                seen.setdefault("first link", t)
            rate = (linked - prev_linked) / max(t - prev_t, 1e-9)
            say(
                f"  [drain] t={t:6.1f}s linked+ {linked:6d} remaining {n - linked:6d}"
                f" ({rate:5.0f}/s) | queue {state['retry_queue']} | verified"
                f" {state['assets'].get('verified', 0)} | online {online}"
            )
            prev_linked, prev_t = linked, t
            done = linked == n and resolved == n == state["total"]
            if t - row_t >= 4.95 or done or t > args.timeout:
                samples.append(
                    f"| {t:.1f} | {linked} | {n - linked}"
                    f" | {(linked - row_linked) / (t - row_t):.0f}"
                    f" | {state['assets'].get('verified', 0)} | {state['retry_queue']} | {online} |"
                )
                row_linked, row_t = linked, t
            if done:
                seen["drained"] = t
                break
            if t > args.timeout:
                break
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - t0 - t)))
    return {"state": state, "seen": seen, "ready": ready, "samples": samples}


async def amain(args: argparse.Namespace) -> bool:
    header(args)
    with private_broker() as broker:
        args.mqtt_url = broker.url
        record(f"Broker: a private Mosquitto at {broker.url} (persistence false), stopped and")
        record("started again on the same port by the bench.")
        record()
        async with stack(args, "drain", args.lockers, "instant", "proveniq_drain") as st:
            backends = st.db_url.split("dbname=")[1].split()[0]
            await wait_broker(st, "ok", 30)  # the worker processes are up too
            broker.stop()
            noticed = await wait_broker(st, "degraded", 180)
            record(f"Broker stopped; every serve process's /readyz said so after {noticed:.1f} s.")
            say(f"[setup] broker stopped; registering {args.links} assets")
            t_setup = time.monotonic()
            answers, ms = await register(st, args.links, args.concurrency)
            setup_s = time.monotonic() - t_setup
            expected = "202 pending_link E_LOCKER_UNREACHABLE"
            record(f"## Setup: {args.links} registrations with the broker down")
            record()
            record(
                f"{args.links} POST /api/assets over {args.lockers} instant lockers,"
                f" {args.concurrency} at a time: {setup_s:.1f} s ({args.links / setup_s:.0f}/s),"
                f" latency p50 {pct(ms, 50):.0f} ms / p99 {pct(ms, 99):.0f} ms"
                f" / max {max(ms):.0f} ms."
            )
            record("Answers: " + ", ".join(f"{k} ×{v}" for k, v in answers.most_common()))
            before = await asyncio.to_thread(ledger_state, st.db_url)
            record(
                f"Ledger before the restart: assets {before['assets']},"
                f" queue {before['retry_queue']}"
            )
            record()

            say("[drain] starting the broker again")
            meter = CpuMeter({"serve": st.processes(), "simulate": [st.sim]}, backends=backends)
            t0 = time.monotonic()
            await asyncio.to_thread(broker.start)
            w = await watch(st, args, t0)
            cpu, wall = meter.read(), time.monotonic() - t0
            state, seen = w["state"], w["seen"]
            drained = "drained" in seen
            n = args.links
            linked = sum(state["assets"].get(s, 0) for s in BEYOND_LINKED)

            record("## Drain after the broker's restart (t = 0: mosquitto started)")
            record()
            record(
                "| t s | linked or beyond | remaining | links/s since the previous row | verified"
                " | retry queue | lockers online (API process) |"
            )
            record("| ---: | ---: | ---: | ---: | ---: | --- | ---: |")
            for row in w["samples"]:
                record(row)
            record()
            for what, t in sorted(seen.items(), key=lambda kv: kv[1]):
                record(f"- t = {t:5.1f} s: {what}")
            if drained:
                d, first = seen["drained"], seen.get("first link", 0.0)
                record()
                record(
                    f"Drained {n} links in {d:.1f} s from the broker's restart: {n / d:.0f} links/s"
                    f" ({n / max(d - first, 1e-9):.0f}/s from the first link, sampled every ~1 s)."
                    f" Target < 60 s: {'MET' if d < 60 else 'NOT MET'}."
                )
            else:
                record()
                record(
                    f"NOT DRAINED at the {args.timeout:.0f} s timeout: {linked} of {n} linked or"
                    " beyond. Open retry-queue entries (status, last error, lockers, entries):"
                )
                for row in await asyncio.to_thread(leftovers, st.db_url):
                    record(f"  {row}")
            per_link = wall * 10 / max(linked, 1)  # ms of CPU per link for each 1 % of a core
            record(
                f"CPU over the drain (% of one core; machine of {psutil.cpu_count() * 100}):"
                f" serve {cpu['serve']:.0f}, PostgreSQL backends {cpu['postgres']:.0f}, simulate"
                f" {cpu['simulate']:.0f}, machine {cpu['machine']:.0f}; load avg"
                f" {cpu['load1']:.1f}. Per link: serve {cpu['serve'] * per_link:.1f} ms,"
                f" PostgreSQL {cpu['postgres'] * per_link:.1f} ms (verification included, as far"
                " as it got meanwhile)."
            )
            tm = await asyncio.to_thread(timings, st.db_url)
            record(
                f"Saga log of the {tm['sagas']:.0f} drained sagas: link attempt p50"
                f" {tm['link_p50']:.0f} ms / p99 {tm['link_p99']:.0f} ms (maintenance check, entry"
                " marked retrying, MQTT round trip, checkpoint); from that attempt's start to the"
                f" saga's end p50 {tm['saga_p50']:.0f} ms / p99 {tm['saga_p99']:.0f} ms; in flight"
                f" on average {tm['in_flight']:.1f} (PROVENIQ_SAGA_CONCURRENCY per worker process,"
                " default 32)."
            )
            record(
                "Circuits not closed at the end (per serve process): "
                + "; ".join(str(r.get("openCircuits")) for r in w["ready"])
            )
            if args.settle:
                state, waited = await drain(st.db_url, args.timeout, "settle")
                record(f"Verifications settled {waited:.0f} s after the drain.")
            record()
            answered = sum(v for k, v in answers.items() if k.startswith("2"))
            other = Counter({k: v for k, v in answers.items() if not k.startswith("2")})
            ok = record_ledger(state, answered, other)
            complete = drained and answers[expected] == n and state["total"] == n and ok
            record(
                "  drained, every answer 202 pending_link, none lost:"
                f" {'YES' if complete else 'NO'}"
            )
            return complete


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--links", type=int, default=10000, help="pending links to create (10000)")
    ap.add_argument("--lockers", type=int, default=100, help="simulated instant lockers (100)")
    ap.add_argument("--concurrency", type=int, default=32, help="registrations in flight (32)")
    ap.add_argument(
        "--timeout", type=float, default=300, help="seconds from the restart to give up (300)"
    )
    ap.add_argument("--settle", action="store_true", help="then wait for the verifications")
    add_serve_options(ap)
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).with_suffix(".txt"), help="the report (markdown)"
    )
    args = ap.parse_args()
    ok = False
    try:
        ok = asyncio.run(amain(args))
    except KeyboardInterrupt:
        say("interrupted; everything this run started is stopped and its database dropped")
    finally:
        if OUT:
            args.out.write_text("\n".join(OUT) + "\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
