"""``proveniq demo``: drive a running service through registrations and print a timeline."""

from __future__ import annotations

import time
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table


def _step_rows(saga: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    for s in saga["steps"]:
        dur = f"{s['durationMs']:.1f} ms" if s["durationMs"] is not None else "…"
        rows.append((f"{s['phase']}:{s['step']}", s["status"], dur, s["errorCode"] or ""))
    return rows


def run_demo(url: str, key: str, *, count: int, wait: float, console: Console) -> int:
    """Register ``count`` assets, follow each to its verification; return an exit code."""
    headers = {"Authorization": f"Bearer {key}"}
    failures = 0
    with httpx.Client(base_url=url, headers=headers, timeout=40.0) as http:
        lockers = http.get("/api/lockers", params={"limit": count}).raise_for_status().json()
        refs = [item["lockerRef"] for item in lockers["items"]]
        if not refs:
            console.print("[red]no lockers registered: POST /api/lockers first[/red]")
            return 1
        for i in range(count):
            ref = refs[i % len(refs)]
            body = {"name": f"Demo asset {i + 1}", "category": "demo", "lockerRef": ref}
            console.rule(f"asset {i + 1}: POST /api/assets → {ref}")
            t0 = time.perf_counter()
            resp = http.post("/api/assets", json=body)
            ms = (time.perf_counter() - t0) * 1000
            console.print(f"[bold]{resp.status_code}[/bold] in {ms:.0f} ms  {resp.json()}")
            if resp.status_code >= 300:
                failures += 1
                continue
            asset_id = resp.json()["assetId"]
            asset = http.get(f"/api/assets/{asset_id}").json()
            saga = http.get(f"/api/ops/sagas/{asset['sagaId']}").json()
            table = Table("step", "outcome", "duration", "error", title=f"saga {saga['sagaId']}")
            for row in _step_rows(saga):
                table.add_row(*row)
            console.print(table)
            deadline = time.monotonic() + wait
            while asset["status"] == "linked" and time.monotonic() < deadline:
                time.sleep(0.2)
                asset = http.get(f"/api/assets/{asset_id}").json()
            v = asset["verification"] or {}
            took = (time.perf_counter() - t0) * 1000
            console.print(
                f"verification {v.get('status')} → asset [bold]{asset['status']}[/bold] "
                f"{took:.0f} ms after the request {v.get('reasons') or ''}"
            )
            if asset["status"] not in ("verified",):
                failures += 1
    console.rule(f"{count - failures}/{count} assets registered and verified")
    return 1 if failures else 0
