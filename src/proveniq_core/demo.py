"""``proveniq demo``: drive a running service through registrations and print a timeline,
then through each failure path with real faults (docs/architecture.md §3):

- a locker answers late: 202 ``pending_link``, then linked by the late answer;
- a locker reports a hardware fault: 502, ``link_failed``, an alert, an operator retry;
- the database refuses connections: 503 with ``Retry-After`` (fast once the ledger circuit
  is open), then registrations succeed again by themselves.

Locker faults go through ``POST /sim/faults`` (a service running the simulated fleet). The
database outage is real: the demo connects to the service's PostgreSQL server, stops its
database from accepting connections and ends the service's sessions, then allows them again.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import psycopg
from psycopg import sql
from rich.console import Console
from rich.table import Table

from proveniq_core.webhooks import signing


def _step_rows(saga: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    for s in saga["steps"]:
        dur = f"{s['durationMs']:.1f} ms" if s["durationMs"] is not None else "…"
        rows.append((f"{s['phase']}:{s['step']}", s["status"], dur, s["errorCode"] or ""))
    return rows


class Receiver:
    """A local webhook receiver: records each POST (headers and body), answers 204."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        lock, received = threading.Lock(), self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with lock:
                    received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks"

    @contextlib.contextmanager
    def running(self) -> Iterator[Receiver]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()


def _signed(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Whether the Standard Webhooks signature of a delivery checks out."""
    expected = signing.signature(
        secret, headers["webhook-id"], int(headers["webhook-timestamp"]), body.decode()
    )
    offered = headers.get("webhook-signature", "").split()
    return any(hmac.compare_digest(expected, sig) for sig in offered)


def _show_deliveries(receiver: Receiver, secret: str, console: Console) -> int:
    from proveniq_core.cli.render import Col, table

    rows = []
    bad = 0
    for headers, body in receiver.received:
        payload = json.loads(body)
        ok = _signed(secret, headers, body)
        bad += not ok
        asset = payload["data"].get("assetId", "")
        rows.append([payload["type"], asset, headers["webhook-id"], "valid" if ok else "BAD"])
    table(
        [Col("event", keep=True), Col("asset"), Col("webhook-id"), Col("signature", keep=True)],
        rows,
        drop=("webhook-id", "asset"),
        title="webhooks received",
        console=console,
    )
    return bad


def run_demo(url: str, key: str, *, count: int, wait: float, console: Console) -> int:
    """Register ``count`` assets, follow each to its verification, and show the webhooks a
    local receiver got for them; return an exit code."""
    headers = {"Authorization": f"Bearer {key}"}
    with (
        httpx.Client(base_url=url, headers=headers, timeout=40.0) as http,
        Receiver().running() as receiver,
    ):
        events = ["asset.created", "asset.linked", "verification.completed", "review.required"]
        hook = http.post("/api/webhooks", json={"url": receiver.url, "events": events})
        if hook.status_code == 422:  # the local receiver is a private destination
            console.print(
                f"[yellow]webhooks not shown: {hook.json()['error']['message']} (start the "
                "service with PROVENIQ_WEBHOOK_ALLOW_PRIVATE=true to see them)[/yellow]"
            )
            failures = _register(http, count=count, wait=wait, console=console)
            console.rule(f"{count - failures}/{count} assets registered and verified")
            return 1 if failures else 0
        hook.raise_for_status()
        try:
            failures = _register(http, count=count, wait=wait, console=console)
            # the last verification.completed may still be on its way
            with console.status("waiting for the last webhooks"):
                _wait_for(lambda: len(receiver.received) >= 3 * (count - failures), 5.0)
            unsigned = _show_deliveries(receiver, hook.json()["secret"], console)
        finally:
            http.delete(f"/api/webhooks/{hook.json()['webhookId']}")
    console.rule(f"{count - failures}/{count} assets registered and verified")
    return 1 if failures or unsigned else 0


def _register(http: httpx.Client, *, count: int, wait: float, console: Console) -> int:
    failures = 0
    lockers = http.get("/api/lockers", params={"limit": count}).raise_for_status().json()
    refs = [item["lockerRef"] for item in lockers["items"]]
    if not refs:
        console.print("[red]no lockers registered: POST /api/lockers first[/red]")
        return count
    for i in range(count):
        ref = refs[i % len(refs)]
        body = {"name": f"Demo asset {i + 1}", "category": "demo", "lockerRef": ref}
        console.rule(f"asset {i + 1}: POST /api/assets → {ref}")
        t0 = time.perf_counter()
        with console.status(f"registering asset {i + 1} on {ref}"):
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
        with console.status(f"waiting for asset {asset_id}'s verification"):
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
    return failures


def _show(console: Console, resp: httpx.Response, ms: float) -> None:
    console.print(f"[bold]{resp.status_code}[/bold] in {ms:.0f} ms  {resp.json()}")


def _post_asset(http: httpx.Client, ref: str, name: str) -> tuple[httpx.Response, float]:
    t0 = time.perf_counter()
    resp = http.post("/api/assets", json={"name": name, "category": "demo", "lockerRef": ref})
    return resp, (time.perf_counter() - t0) * 1000


def _wait_for(
    check: Callable[[], bool], within: float, console: Console | None = None, what: str = ""
) -> float | None:
    """Seconds until ``check()`` held, or None after ``within`` seconds; with ``console``, a
    spinner says what we wait for meanwhile."""
    t0 = time.monotonic()
    with console.status(what) if console is not None else contextlib.nullcontext():
        while not check():
            if time.monotonic() - t0 > within:
                return None
            time.sleep(0.2)
    return time.monotonic() - t0


def _status(http: httpx.Client, asset_id: str) -> str:
    return str(http.get(f"/api/assets/{asset_id}").json()["status"])


LINKED = ("linked", "verified", "rejected", "manual_review")  # linked, or verified since


def _linked(http: httpx.Client, asset_id: str) -> bool:
    return _status(http, asset_id) in LINKED


def run_failures(
    url: str, key: str, *, database_url: str | None, wait: float, console: Console
) -> int:
    """Show the timeout, hardware-fault and ledger-down paths; return an exit code."""
    headers = {"Authorization": f"Bearer {key}"}
    failures = 0
    with httpx.Client(base_url=url, headers=headers, timeout=40.0) as http:
        if http.get("/sim/faults").status_code == 404:
            # Not a demo deployment: never inject faults into it, least of all take its
            # database down.
            console.print("[yellow]the service simulates no lockers: failure paths skipped[/]")
            return 0
        ref = http.get("/api/lockers", params={"limit": 1}).json()["items"][0]["lockerRef"]
        failures += _timeout_path(http, ref, wait, console)
        failures += _hardware_path(http, ref, wait, console)
        if database_url is None:
            console.print("[yellow]no database to take down: ledger outage skipped[/]")
        else:
            failures += _ledger_path(http, database_url, wait, console)
    console.rule("failure paths: " + ("all recovered" if not failures else f"{failures} failed"))
    return 1 if failures else 0


def _timeout_path(http: httpx.Client, ref: str, wait: float, console: Console) -> int:
    console.rule(f"locker timeout: {ref} answers 4 s late")
    # On the link only: the evidence collection of an asset verified just before must not
    # take the fault meant for this registration.
    late = {"lockerRef": ref, "command": "link", "fault": "delay", "delayMs": 4000, "count": 1}
    http.post("/sim/faults", json=late)
    with console.status(f"registering on {ref}: waiting out the link budget"):
        resp, ms = _post_asset(http, ref, "Late answer")
    _show(console, resp, ms)
    if resp.status_code != 202:
        return 1
    asset_id = resp.json()["assetId"]
    took = _wait_for(lambda: _linked(http, asset_id), wait, console, "waiting for the late answer")
    if took is None:
        console.print(f"[red]asset {asset_id} not linked after {wait:g} s[/red]")
        return 1
    console.print(f"recovered: asset linked {took:.1f} s after the 202, without a new command")
    return 0


def _hardware_path(http: httpx.Client, ref: str, wait: float, console: Console) -> int:
    console.rule(f"hardware fault: {ref} reports a jammed latch")
    # On the link only: the late asset's evidence collection may be under way right now.
    jammed = {"lockerRef": ref, "command": "link", "fault": "hardware_fault", "count": 1}
    http.post("/sim/faults", json=jammed)
    resp, ms = _post_asset(http, ref, "Jammed latch")
    _show(console, resp, ms)
    if resp.status_code != 502:
        return 1
    asset_id = resp.json()["error"]["assetId"]
    console.print(f"asset {_status(http, asset_id)}; alerts:")
    for alert in http.get("/api/ops/alerts", params={"code": "E_LOCKER_HARDWARE"}).json()["items"]:
        console.print(f"  {alert['severity']} {alert['code']}: {alert['message']}")
    console.print(f"operator: POST /api/ops/assets/{asset_id}/retry-link")
    t0 = time.monotonic()
    with console.status("retrying the link: waiting for the locker"):
        retried = http.post(f"/api/ops/assets/{asset_id}/retry-link")
    console.print(f"[bold]{retried.status_code}[/bold] {retried.json()}")
    took = _wait_for(lambda: _linked(http, asset_id), wait, console, "waiting for the link")
    if took is None:
        console.print(f"[red]asset {asset_id} not linked after the retry[/red]")
        return 1
    console.print(f"recovered: asset [bold]linked[/bold] {time.monotonic() - t0:.1f} s after it")
    return 0


def _ledger_path(http: httpx.Client, database_url: str, wait: float, console: Console) -> int:
    ref = http.get("/api/lockers", params={"limit": 1}).json()["items"][0]["lockerRef"]
    params = psycopg.conninfo.conninfo_to_dict(database_url)
    name = str(params.get("dbname") or "postgres")
    admin = psycopg.conninfo.make_conninfo(database_url, dbname="postgres")
    console.rule(f"ledger down: database {name} stops accepting connections")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(name))
        )
        try:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            refused = 0
            for i in range(8):
                resp, ms = _post_asset(http, ref, f"During outage {i + 1}")
                after = resp.headers.get("retry-after")
                code = resp.json().get("error", {}).get("code")
                console.print(
                    f"[bold]{resp.status_code}[/bold] {code} in {ms:.0f} ms  Retry-After: {after}"
                )
                refused += resp.status_code == 503
        finally:
            conn.execute(
                sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(
                    sql.Identifier(name)
                )
            )
    console.print("database accepting connections again")
    t0 = time.monotonic()
    took = _wait_for(
        lambda: _post_asset(http, ref, "After outage")[0].status_code == 201,
        wait,
        console,
        "waiting for registrations to succeed again",
    )
    if refused == 0 or took is None:
        console.print(f"[red]refused {refused} of 8; recovered: {took}[/red]")
        return 1
    console.print(f"recovered: 201 again {time.monotonic() - t0:.1f} s after the database returned")
    return 0
