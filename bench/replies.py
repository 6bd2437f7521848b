"""CPU per locker reply as Core runs in K processes: replies routed by replyTo vs fan-out.

Starts a simulated fleet (instant lockers) and K gateway processes on one MQTT broker
(default the machine's Mosquitto), each a ``LockerGateway`` as ``serve`` builds it. One of
them sends ``--commands`` pings (``--concurrency`` in flight); the others idle, as API and
worker processes do while another process's commands are answered. The CPU every gateway
process spent while the commands ran (psutil, user + system), divided by the commands, is
the cost of a reply to Core as a whole. Each K runs twice, side by side: the fleet answering
on ``replyTo`` (each reply parsed by the process that asked; the others drop a copy by its
topic) and answering on ``.../replies`` as a device without ``replyTo`` does (every process
parses every reply). Rounds interleave the two and K, and the report gives medians.

    .venv-bench/bin/python bench/replies.py                       # K = 1..4, 3 rounds (~3 min)
    .venv-bench/bin/python bench/replies.py --ks 1,4 --rounds 1   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiomqtt
import psutil

from proveniq_core import logs
from proveniq_core.locker.gateway import LockerGateway, parse_mqtt_url
from proveniq_core.locker.protocol import status_topic
from proveniq_core.locker.simulator import LatencyProfile, LockerFleet, fleet_specs

HERE = Path(__file__).resolve().parent


async def run_fleet(url: str, prefix: str, lockers: int, legacy: bool) -> None:
    fleet = LockerFleet(
        url, fleet_specs(lockers, prefix), LatencyProfile.instant(), reply_to=not legacy
    )
    await fleet.start()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await fleet.stop()
    # Leave no retained "offline" behind on the shared broker: piled up over runs, they
    # overflow every new subscriber's queue and its replies are dropped.
    host, port = parse_mqtt_url(url)
    async with aiomqtt.Client(host, port) as client:
        for spec in fleet_specs(lockers, prefix):
            await client.publish(status_topic(spec.ref), b"", qos=1, retain=True)


async def run_gateway(url: str, prefix: str, lockers: int, ask: int, conc: int) -> None:
    gateway = LockerGateway(url)
    await gateway.start()
    refs = [spec.ref for spec in fleet_specs(lockers, prefix)]
    for ref in refs:
        await gateway.wait_online(ref, timeout=10)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)  # "go"
    if ask:
        gate = asyncio.Semaphore(conc)

        async def one(i: int) -> None:
            async with gate:
                await gateway.send(
                    refs[i % len(refs)], "ping", command_id=uuid.uuid4().hex, timeout=10
                )

        await asyncio.gather(*(one(i) for i in range(ask)))
        print("done", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # "stop"
    await gateway.stop()


def spawn(*args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, __file__, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONPATH": str(HERE.parent / "src")},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "ready":
        raise SystemExit(f"helper process did not start: {line!r}")
    return proc


def tell(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def cpu(proc: subprocess.Popen[str]) -> float:
    t = psutil.Process(proc.pid).cpu_times()
    return t.user + t.system


def one_run(args: argparse.Namespace, k: int, legacy: bool) -> tuple[float, float, float]:
    """(ms of CPU per reply in all K gateway processes, in the K-1 that did not ask,
    seconds) for K processes."""
    prefix = f"b{uuid.uuid4().hex[:8]}-locker-"
    common = [args.mqtt_url, prefix, str(args.lockers)]
    fleet = spawn("--fleet", *common, "--legacy" if legacy else "--replyto")
    gateways = [
        spawn("--gateway", *common, str(args.commands if i == 0 else 0), str(args.concurrency))
        for i in range(k)
    ]
    try:
        time.sleep(1.0)  # let the retained presences settle everywhere
        before = [cpu(g) for g in gateways]
        started = time.perf_counter()
        for g in gateways:
            tell(g, "go")
        assert gateways[0].stdout is not None
        if gateways[0].stdout.readline().strip() != "done":
            raise SystemExit("the asking gateway failed")
        elapsed = time.perf_counter() - started
        time.sleep(0.3)  # copies still queued to the idle processes
        spent = [cpu(g) - b for g, b in zip(gateways, before, strict=True)]
        return sum(spent) / args.commands * 1000, sum(spent[1:]) / args.commands * 1000, elapsed
    finally:
        for p in [*gateways, fleet]:
            tell(p, "stop")
        for p in [*gateways, fleet]:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("--fleet", "--gateway"):
        logs.configure("warning", json=True)  # to stderr: stdout speaks to the parent
    if len(sys.argv) > 1 and sys.argv[1] == "--fleet":
        url, prefix, n, mode = sys.argv[2:6]
        asyncio.run(run_fleet(url, prefix, int(n), mode == "--legacy"))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--gateway":
        url, prefix, n, ask, conc = sys.argv[2:7]
        asyncio.run(run_gateway(url, prefix, int(n), int(ask), int(conc)))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mqtt-url", default="mqtt://127.0.0.1:1883")
    ap.add_argument("--ks", default="1,2,3,4", help="process counts to compare")
    ap.add_argument("--commands", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--lockers", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "replies.txt")
    args = ap.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    results: dict[tuple[int, bool], list[float]] = {}
    idle: dict[tuple[int, bool], list[float]] = {}
    for r in range(args.rounds):
        for k in ks:
            for legacy in (False, True):
                ms, others, secs = one_run(args, k, legacy)
                results.setdefault((k, legacy), []).append(ms)
                idle.setdefault((k, legacy), []).append(others)
                mode = "fan-out (.../replies)" if legacy else "replyTo"
                print(
                    f"round {r + 1} K={k} {mode}: {ms:.3f} ms CPU per reply, {others:.3f} in"
                    f" the processes that did not ask ({secs:.1f} s)",
                    flush=True,
                )
    lines = [
        f"# bench/replies.py, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"# {args.commands} pings, {args.concurrency} in flight, {args.lockers} instant lockers,"
        f" broker {args.mqtt_url},"
        f" {args.rounds} interleaved rounds; {os.cpu_count()} cores shared by everything",
        "",
        "ms of CPU per reply, medians: all K processes (of which the K-1 that did not ask)",
        "",
        "| K processes | replyTo | fan-out (.../replies) | fan-out / replyTo |",
        "| ---: | ---: | ---: | ---: |",
    ]
    base = statistics.median(results[(ks[0], False)])
    for k in ks:
        direct = statistics.median(results[(k, False)])
        fan = statistics.median(results[(k, True)])
        d_idle = statistics.median(idle[(k, False)])
        f_idle = statistics.median(idle[(k, True)])
        lines.append(
            f"| {k} | {direct:.3f} ({d_idle:.3f}), ×{direct / base:.2f} of K={ks[0]} |"
            f" {fan:.3f} ({f_idle:.3f}) | ×{fan / direct:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
