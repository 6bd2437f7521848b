"""Logs, readiness and the SLO report, seen from outside: JSON lines, /readyz, /api/ops/slo."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import structlog

from proveniq_core import db, logs
from proveniq_core.api.app import create_app
from proveniq_core.api.health import READY_WAIT_S
from proveniq_core.config import Settings
from proveniq_core.errors import LedgerDownError
from proveniq_core.ledger import keys
from proveniq_core.locker.faults import parse_rule
from proveniq_core.resilience.breaker import LEDGER, State
from proveniq_core.service import Core, running
from tests.helpers import eventually
from tests.integration.conftest import TENANT, api_client, first_ref
from tests.integration.test_registration import wait_status


@contextmanager
def json_log_lines() -> Iterator[list[dict[str, Any]]]:
    """Configure the real JSON logging into a buffer; the list fills with its parsed lines."""
    buffer = io.StringIO()
    lines: list[dict[str, Any]] = []
    logs.configure("debug", json=True, stream=buffer)
    try:
        yield lines
    finally:
        structlog.reset_defaults()
        lines.extend(json.loads(line) for line in buffer.getvalue().splitlines())


def asset(ref: str) -> dict[str, str]:
    return {"name": "Omega Speedmaster", "category": "watch", "lockerRef": ref}


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def plain(core: Core) -> httpx.AsyncClient:
    """A client without an API key: health routes need none."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(core)), base_url="http://t"
    )


async def test_a_registration_logs_json_lines_carrying_its_ids(
    core: Core, client: httpx.AsyncClient
) -> None:
    """The request's access line and the saga's and verification's lines carry their ids."""
    ref = first_ref(core)
    with json_log_lines() as lines:
        created = await client.post(
            "/api/assets", json=asset(ref), headers={"X-Request-ID": "req-obs-7"}
        )
        assert created.status_code == 201, created.text
        asset_id = created.json()["assetId"]
        await wait_status(client, asset_id, "verified")
    assert created.headers["X-Request-ID"] == "req-obs-7"
    saga_id = (await client.get(f"/api/assets/{asset_id}")).json()["sagaId"]

    (access,) = [
        line
        for line in lines
        if line["event"] == "http_request" and line.get("request_id") == "req-obs-7"
    ]
    assert access["method"] == "POST"
    assert access["route"] == "/api/assets"
    assert access["status"] == 201
    assert access["duration_ms"] >= 0
    assert access["level"] == "info"
    assert "timestamp" in access

    (completed,) = [
        line for line in lines if line["event"] == "saga_completed" and line["saga_id"] == saga_id
    ]
    assert completed["asset_id"] == asset_id
    assert completed["locker_ref"] == ref
    assert completed["request_id"] == "req-obs-7"

    verification = [line for line in lines if line["event"].startswith("verification_")]
    assert {line["event"] for line in verification} >= {
        "verification_collecting",
        "verification_completed",
    }
    for line in verification:
        assert (line["asset_id"], line["locker_ref"], line["saga_id"]) == (asset_id, ref, saga_id)

    # Every other request got its own line, with an id of its own.
    polls = [line for line in lines if line["event"] == "http_request"][1:]
    assert polls and all(line["route"] == "/api/assets/{asset_id}" for line in polls)
    assert all(line["request_id"] != "req-obs-7" for line in polls)


async def test_a_request_id_is_generated_unless_a_safe_one_is_given(
    core: Core, client: httpx.AsyncClient
) -> None:
    """No or an unsafe X-Request-ID gets a fresh id, echoed and logged on the access line."""
    with json_log_lines() as lines:
        missing = await client.get("/healthz")
        unsafe = await client.get("/healthz", headers={"X-Request-ID": "a b<script>"})
    ids = [missing.headers["X-Request-ID"], unsafe.headers["X-Request-ID"]]
    assert all(len(rid) == 32 and int(rid, 16) >= 0 for rid in ids)
    assert ids[0] != ids[1]
    assert [line["request_id"] for line in lines if line["event"] == "http_request"] == ids


def server_timing(resp: httpx.Response) -> dict[str, float]:
    """``Server-Timing: locker;dur=312.0, core;dur=20.5`` as ``{"locker": 312.0, ...}``."""
    metrics = (part.strip().split(";dur=") for part in resp.headers["Server-Timing"].split(","))
    return {name: float(ms) for name, ms in metrics}


async def test_server_timing_tells_the_locker_wait_from_cores_own_time(
    core: Core, client: httpx.AsyncClient
) -> None:
    """A link the locker holds 400 ms shows as ``locker`` >= 400 ms; ``core`` is the rest of
    the request. A request that waits on nothing has ``core`` alone."""
    assert core.fleet is not None
    ref = first_ref(core)
    core.fleet.faults.add(parse_rule({"lockerRef": ref, "fault": "delay", "delayMs": 400}))
    slow = await client.post("/api/assets", json=asset(ref))
    assert slow.status_code == 201, slow.text
    timings = server_timing(slow)
    assert list(timings) == ["locker", "core"]
    assert timings["locker"] >= 400
    assert 0 < timings["core"] < timings["locker"]

    listed = await client.get("/api/assets")
    assert listed.status_code == 200
    assert list(server_timing(listed)) == ["core"]


async def test_readyz_is_ready_then_unready_while_the_ledger_circuit_is_open(core: Core) -> None:
    """An open ledger circuit makes /readyz 503 with the circuit listed; /healthz stays 200."""
    async with plain(core) as http:
        ready = await http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["status"] == "ready"
        assert ready.json()["openCircuits"] == []

        breaker = core.breakers["ledger"]
        for _ in range(LEDGER.volume_threshold):
            if breaker.state is State.OPEN:
                break
            with breaker.acquire() as permit:
                permit.record_failure(LedgerDownError())
        assert breaker.state is State.OPEN
        try:
            down = await http.get("/readyz")
            alive = await http.get("/healthz")
        finally:
            breaker.reset()
        back = await http.get("/readyz")

    assert down.status_code == 503
    assert down.json() == {
        "status": "unready",
        "checks": {
            "database": "down",
            "migrations": "unknown",
            "broker": "ok",
            "ledgerCircuit": "open",
        },
        "openCircuits": ["ledger"],
    }
    assert (alive.status_code, alive.json()) == (200, {"status": "ok"})
    assert (back.status_code, back.json()["status"]) == (200, "ready")


async def test_readyz_answers_busy_within_its_bound_while_the_pool_is_saturated(
    core: Core,
) -> None:
    """Every connection busy while others keep getting one: /readyz does not queue behind
    the work; within its bound it answers 200 degraded with the database busy."""
    stop = asyncio.Event()

    async def hold_in_turn() -> None:
        while not stop.is_set():
            async with db.connection(core.pool):
                await asyncio.sleep(1.5)

    # Three times as many holders as connections: a newcomer waits about 3 s for its turn.
    holders = [asyncio.create_task(hold_in_turn()) for _ in range(3 * core.pool.max_size)]
    try:
        await asyncio.sleep(0.5)
        async with plain(core) as http:
            started = time.monotonic()
            busy = await http.get("/readyz")
            took = time.monotonic() - started
    finally:
        stop.set()
        await asyncio.gather(*holders, return_exceptions=True)
    assert busy.status_code == 200
    assert busy.json()["status"] == "degraded"
    assert busy.json()["checks"]["database"] == "busy"
    assert took < READY_WAIT_S + 1.0  # it answered at its bound, not after the queue
    async with plain(core) as http:
        assert (await http.get("/readyz")).json()["status"] == "ready"


async def test_readyz_is_unready_when_no_connection_comes_free(core: Core) -> None:
    """Every connection held and none handed out within the bound (a hung server looks so):
    503 with the database down, answered at the bound."""
    release = asyncio.Event()
    held = 0

    async def hold() -> None:
        nonlocal held
        async with db.connection(core.pool):
            held += 1
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(core.pool.max_size)]
    try:
        await eventually(lambda: held == core.pool.max_size)
        async with plain(core) as http:
            stuck = await http.get("/readyz")
    finally:
        release.set()
        await asyncio.gather(*holders, return_exceptions=True)
    assert stuck.status_code == 503
    assert stuck.json()["checks"]["database"] == "down"


async def test_readyz_is_unready_while_a_migration_is_pending(core: Core) -> None:
    """A database behind the code (its latest migration not applied) makes /readyz 503,
    naming the pending version; applied again, ready."""
    latest = db.migrations()[-1]
    async with db.connection(core.pool) as conn:
        await conn.execute("DELETE FROM schema_migrations WHERE version = %s", (latest.version,))
    try:
        async with plain(core) as http:
            behind = await http.get("/readyz")
    finally:
        async with db.connection(core.pool) as conn:
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                (latest.version, latest.name),
            )
    async with plain(core) as http:
        back = await http.get("/readyz")
    assert behind.status_code == 503
    assert behind.json()["status"] == "unready"
    assert behind.json()["checks"]["migrations"] == f"pending: [{latest.version}]"
    assert behind.json()["checks"]["database"] == "ok"
    assert (back.status_code, back.json()["status"]) == (200, "ready")


async def test_readyz_is_degraded_but_serving_without_the_broker(
    database_url: str, tmp_path: Path
) -> None:
    """A Core whose broker does not answer is ready to serve, degraded: 200, broker degraded."""
    settings = Settings(
        home=tmp_path,
        database_url=database_url,
        mqtt_url=f"mqtt://127.0.0.1:{unused_port()}",
        poll_interval=0.2,
    )
    async with running(settings) as c, plain(c) as http:
        ready = await http.get("/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "degraded"
    assert body["checks"] == {
        "database": "ok",
        "migrations": "ok",
        "broker": "degraded",
        "ledgerCircuit": "closed",
    }


async def test_slo_report_counts_registrations_and_orders_its_percentiles(
    core: Core, client: httpx.AsyncClient
) -> None:
    """/api/ops/slo grows by each registration, p50 ≤ p95 ≤ p99, and needs ops:read."""
    before = await client.get("/api/ops/slo")
    assert before.status_code == 200, before.text
    for _ in range(3):
        created = await client.post("/api/assets", json=asset(first_ref(core)))
        assert created.status_code == 201, created.text
    after = (await client.get("/api/ops/slo")).json()

    assert "this process" in after["basis"] and "bucket" in after["basis"]
    requests = after["requests"]
    assert requests["operation"] == "POST /api/assets"
    assert requests["count"] - before.json()["requests"]["count"] == 3
    percentiles = [requests[p] for p in ("p50", "p95", "p99")]
    assert [p["quantile"] for p in percentiles] == [0.5, 0.95, 0.99]
    assert [p["targetSeconds"] for p in percentiles] == [0.5, 1.5, 3.0]
    seconds = [p["seconds"] for p in percentiles]
    assert 0 < seconds[0] <= seconds[1] <= seconds[2]
    assert all(p["met"] == (p["seconds"] <= p["targetSeconds"]) for p in percentiles)

    counted = {s["step"]: s["count"] for s in before.json()["steps"]}
    steps = {s["step"]: s for s in after["steps"]}
    assert list(steps) == [
        "create_ledger_record",
        "link_locker",
        "update_status",
        "queue_verification",
    ]
    assert steps["link_locker"]["seedSteps"] == "4 Locker Link"
    assert (
        steps["link_locker"]["budgetTargetSeconds"],
        steps["link_locker"]["budgetMaxSeconds"],
    ) == (
        0.2,
        2.0,
    )
    for name, step in steps.items():
        assert step["count"] - counted[name] == 3
        assert step["medianSeconds"] is not None and step["medianSeconds"] > 0
        assert step["withinTarget"] == (step["medianSeconds"] <= step["budgetTargetSeconds"])
        assert step["withinMax"] == (step["medianSeconds"] <= step["budgetMaxSeconds"])

    reader = await keys.create_key(core.pool, TENANT, ["assets:read"], name="no ops")
    async with api_client(core, reader) as http:
        forbidden = await http.get("/api/ops/slo")
    async with plain(core) as http:
        anonymous = await http.get("/api/ops/slo")
    assert (forbidden.status_code, anonymous.status_code) == (403, 401)
