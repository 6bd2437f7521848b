"""Register the lockers ``proveniq simulate`` runs with a Core API, through ``POST /api/lockers``.

A simulated fleet only exists on the broker; Core links an asset only to a locker it knows.
This registers ``{prefix}001`` … with the same sites ``proveniq simulate --lockers N
--prefix P`` places its devices on (their evidence carries those GPS positions), for the
tenant of the API key. Lockers already registered are left as they are, so it can run at
every start::

    python deploy/register_lockers.py --url http://api:8700 --lockers 10 \\
        --key-file /var/lib/proveniq/bootstrap-key

The key needs the ``ops:write`` scope (the bootstrap admin key has it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import httpx

from proveniq_core.locker.simulator import fleet_specs


def wait_ready(http: httpx.Client, timeout: float) -> None:
    """Wait until ``/readyz`` answers 200 (ready or degraded), or raise ``TimeoutError``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if http.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{http.base_url} not ready within {timeout:g} s")
        time.sleep(0.5)


def read_key(key_file: Path | None, timeout: float) -> str:
    """The API key from ``PROVENIQ_API_KEY``, else from ``key_file`` once it exists."""
    if key := os.environ.get("PROVENIQ_API_KEY"):
        return key
    if key_file is None:
        raise SystemExit("no API key: set PROVENIQ_API_KEY or pass --key-file")
    deadline = time.monotonic() + timeout
    while not key_file.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"no key file at {key_file} after {timeout:g} s")
        time.sleep(0.5)
    return key_file.read_text().strip()


def register(url: str, key: str, lockers: int, prefix: str, geofence_m: float) -> list[str]:
    """Register the fleet's lockers; return the refs newly registered."""
    created = []
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=10) as http:
        for spec in fleet_specs(lockers, prefix):
            body = {
                "lockerRef": spec.ref,
                "site": {"lat": spec.lat, "lon": spec.lon},
                "geofenceM": geofence_m,
            }
            resp = http.post("/api/lockers", json=body)
            if resp.status_code == 201:
                created.append(spec.ref)
            elif resp.status_code != 409:  # 409: registered already
                raise SystemExit(f"{spec.ref}: {resp.status_code} {resp.text}")
    return created


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("PROVENIQ_URL", "http://127.0.0.1:8700"))
    parser.add_argument("--lockers", type=int, default=10)
    parser.add_argument("--prefix", default="locker-")
    parser.add_argument("--geofence-m", type=float, default=100.0)
    parser.add_argument("--key-file", type=Path)
    parser.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the API")
    args = parser.parse_args(argv)
    with httpx.Client(base_url=args.url, timeout=5) as probe:
        wait_ready(probe, args.wait)
    key = read_key(args.key_file, args.wait)
    created = register(args.url, key, args.lockers, args.prefix, args.geofence_m)
    print(f"{len(created)} lockers registered, {args.lockers - len(created)} already known")
    return 0


if __name__ == "__main__":
    sys.exit(main())
