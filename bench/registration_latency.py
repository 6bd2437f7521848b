"""Sequential POST /api/assets latency against a real ``proveniq serve`` on its embedded default.

    python bench/registration_latency.py [--count 200]

Starts ``proveniq serve`` in a subprocess (fresh data dir, free port), measures the time
from launch to the ready banner, then registers ``--count`` assets one after another and
reports p50/p95/p99 of the end-to-end HTTP latency, plus the time until all are verified.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

from proveniq_core.embedded import free_port


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--profile", default="instant", help="simulated locker latency profile")
    args = ap.parse_args()

    port = free_port()
    with tempfile.TemporaryDirectory() as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROVENIQ_")}
        env |= {
            "PROVENIQ_HOME": home,
            "PROVENIQ_PORT": str(port),
            "PROVENIQ_SIM_PROFILE": args.profile,
            "PROVENIQ_LOG_LEVEL": "warning",
        }
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "proveniq_core", "serve"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None
        key = ""
        for line in proc.stdout:
            if line.startswith("Admin API key:"):
                key = line.split()[-1]
            if line.startswith("Ctrl-C"):
                break
        ready_s = time.perf_counter() - t0
        try:
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}",
                headers={"Authorization": f"Bearer {key}"},
                timeout=30,
            ) as http:
                lat, ids = [], []
                for i in range(args.count):
                    body = {
                        "name": f"bench {i}",
                        "category": "bench",
                        "lockerRef": f"locker-{i % 10 + 1:03d}",
                    }
                    s = time.perf_counter()
                    r = http.post("/api/assets", json=body)
                    lat.append((time.perf_counter() - s) * 1000)
                    assert r.status_code == 201, r.text
                    ids.append(r.json()["assetId"])
                s = time.perf_counter()
                while http.get("/api/assets", params={"status": "verified", "limit": 200}).json()[
                    "items"
                ].__len__() < min(args.count, 200):
                    time.sleep(0.05)
                settle_s = time.perf_counter() - s
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
            proc.stdout.close()
    print(f"serve → ready: {ready_s:.2f} s (fresh data dir, embedded PostgreSQL + broker + fleet)")
    print(
        f"POST /api/assets x{args.count} sequential, profile {args.profile}: "
        f"p50 {pct(lat, 50):.1f} ms, p95 {pct(lat, 95):.1f} ms, p99 {pct(lat, 99):.1f} ms, "
        f"mean {statistics.mean(lat):.1f} ms"
    )
    print(f"verifications settled {settle_s:.2f} s after the last 201")


if __name__ == "__main__":
    main()
