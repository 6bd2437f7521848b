"""``GET /metrics`` after real registrations: requests, sagas, steps, locker commands, circuits
and the retry queue, with bounded labels, and still answering while the database is down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from proveniq_core.api.app import create_app
from proveniq_core.ledger import keys
from proveniq_core.locker.faults import parse_rule
from proveniq_core.service import Core
from tests.integration.conftest import TENANT, api_client, core_running

# role="api": no workers, so nothing but the test moves a parked saga. The link waits 0.2 s in
# the request; a command the locker never answers fails after 0.6 s; the pool waits 0.3 s.
SETTINGS: dict[str, Any] = {
    "role": "api",
    "link_sync_budget_ms": 200,
    "locker_command_timeout": 0.6,
    "ledger_timeout": 0.3,
}
SAGA = {"saga": "asset_registration"}
POST_ASSETS = {"subsystem": "api", "operation": "POST /api/assets"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest_asyncio.fixture
async def core(database_url: str, mqtt_url: str, tmp_path: Path) -> AsyncIterator[Core]:
    async with core_running(database_url, mqtt_url, tmp_path, **SETTINGS) as c:
        yield c


@pytest_asyncio.fixture
async def http(core: Core) -> AsyncIterator[httpx.AsyncClient]:
    key = await keys.create_key(core.pool, TENANT, keys.SCOPES, name="metrics tests")
    async with api_client(core, key) as client:
        yield client


async def scrape(core: Core) -> tuple[str, Samples]:
    """``GET /metrics`` without a key, on a fresh app (so the retry-queue depth is read now)."""
    transport = httpx.ASGITransport(app=create_app(core))
    async with httpx.AsyncClient(transport=transport, base_url="http://core.test") as anon:
        resp = await anon.get("/metrics")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }
    return resp.text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def register(http: httpx.AsyncClient, ref: str) -> Any:
    return http.post(
        "/api/assets", json={"name": "Leica M6", "category": "camera", "lockerRef": ref}
    )


async def test_registrations_show_in_metrics_with_bounded_labels(
    core: Core, http: httpx.AsyncClient
) -> None:
    """A linked, a hardware-faulted and a deferred registration are counted by status, saga
    outcome, step and locker outcome; the circuits and the retry queue are read; no label
    names an asset, a saga or a locker."""
    assert core.fleet is not None
    linked_ref, faulty_ref, silent_ref = (d.ref for d in core.fleet.devices)
    core.fleet.faults.add(parse_rule({"lockerRef": faulty_ref, "fault": "hardware_fault"}))
    core.fleet.faults.add(parse_rule({"lockerRef": silent_ref, "fault": "drop"}))
    _, before = await scrape(core)

    answers = [await register(http, ref) for ref in (linked_ref, faulty_ref, silent_ref)]
    assert [r.status_code for r in answers] == [201, 502, 202]
    asset_ids = [answers[0].json()["assetId"], answers[2].json()["assetId"]]
    asset_ids.append(answers[1].json()["error"]["assetId"])

    timeout = {"subsystem": "locker", "operation": "link", "status": "timeout"}
    for _ in range(100):  # the dropped command fails after locker_command_timeout
        text, after = await scrape(core)
        if delta(before, after, "core_orchestration_requests_total", **timeout) == 1:
            break
        await asyncio.sleep(0.1)

    def counted(name: str, **labels: str) -> float:
        return delta(before, after, name, **labels)

    requests, latency = "core_orchestration_requests_total", "core_orchestration_latency_seconds"
    for status in ("201", "502", "202"):
        assert counted(requests, **POST_ASSETS, status=status) == 1
        assert counted(f"{latency}_count", **POST_ASSETS, status=status) == 1
        assert value(after, f"{latency}_bucket", **POST_ASSETS, status=status, le="3.0") >= 1

    assert counted("core_sagas_total", **SAGA, outcome="completed") == 1
    assert counted("core_saga_duration_seconds_count", **SAGA, outcome="completed") == 1
    assert counted("core_saga_duration_seconds_count", **SAGA, outcome="deferred") == 2
    assert ("core_sagas_total", frozenset({**SAGA, "outcome": "compensated"}.items())) in after
    steps = {"create_ledger_record": 3, "link_locker": 3, "update_status": 1}
    for step, runs in (steps | {"queue_verification": 1}).items():
        assert counted("core_saga_step_duration_seconds_count", **SAGA, step=step) == runs

    for status in ("ok", "hardware_fault", "timeout"):
        assert counted(requests, subsystem="locker", operation="link", status=status) == 1
        assert counted(f"{latency}_count", subsystem="locker", operation="link", status=status) == 1
    assert counted(requests, subsystem="ledger", operation="transaction", status="ok") > 0

    for circuit in ("ledger", "locker"):
        states = {
            s: value(after, "core_circuit_breaker_state", circuit=circuit, state=s)
            for s in ("closed", "open", "half_open")
        }
        assert states == {"closed": 1, "open": 0, "half_open": 0}
    assert ("core_circuit_breaker_open_devices", frozenset()) in after
    depth = {
        s: after[("core_dlq_depth", frozenset({"queue": "locker_link", "status": s}.items()))]
        for s in ("pending", "retrying", "exhausted")
    }
    assert depth == {"pending": 1, "retrying": 0, "exhausted": 0}

    sagas = (await http.get("/api/ops/sagas")).json()["items"]
    forbidden = [*asset_ids, *(s["sagaId"] for s in sagas), linked_ref, faulty_ref, silent_ref]
    assert len(sagas) == 3
    assert [x for x in forbidden if x in text] == []


async def test_metrics_answer_while_the_database_is_down(
    core: Core, http: httpx.AsyncClient, pg_admin_url: str, database_url: str
) -> None:
    """With the database refusing connections, /metrics still answers at once: the 503s are
    counted, the ledger circuit reads open and the retry-queue depth keeps its last value."""
    assert core.fleet is not None
    ref = core.fleet.devices[0].ref
    core.fleet.faults.add(parse_rule({"lockerRef": ref, "fault": "drop"}))
    assert (await register(http, ref)).status_code == 202
    _, before = await scrape(core)
    pending = {"queue": "locker_link", "status": "pending"}
    assert value(before, "core_dlq_depth", **pending) == 1

    name = conninfo_to_dict(database_url)["dbname"]
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
    try:
        for _ in range(20):  # until the ledger circuit opens (the seed's thresholds)
            assert (await register(http, ref)).status_code == 503
            _, after = await scrape(core)
            if value(after, "core_circuit_breaker_state", circuit="ledger", state="open"):
                break
    finally:
        with psycopg.connect(make_conninfo(pg_admin_url), autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")

    assert (
        delta(before, after, "core_orchestration_requests_total", **POST_ASSETS, status="503") >= 1
    )
    assert value(after, "core_circuit_breaker_state", circuit="ledger", state="open") == 1
    assert value(after, "core_circuit_breaker_state", circuit="ledger", state="closed") == 0
    down = [
        delta(before, after, "core_orchestration_requests_total", subsystem="ledger", **labels)
        for labels in ({"operation": op, "status": "down"} for op in ("connection", "transaction"))
    ]
    assert sum(down) >= 1
    assert value(after, "core_dlq_depth", **pending) == 1


async def test_verification_and_webhook_outcomes_are_counted(
    database_url: str, mqtt_url: str, tmp_path: Path
) -> None:
    """With workers running, a verified registration counts one verification outcome, and a
    webhook endpoint that refuses connections counts a delivery attempt to be retried."""
    async with core_running(database_url, mqtt_url, tmp_path, webhook_allow_private=True) as core:
        key = await keys.create_key(core.pool, TENANT, keys.SCOPES, name="metrics tests")
        async with api_client(core, key) as http:
            hook = {"url": "http://127.0.0.1:1/hooks", "events": ["asset.created"]}
            assert (await http.post("/api/webhooks", json=hook)).status_code == 201
            _, before = await scrape(core)
            assert core.fleet is not None
            created = await register(http, core.fleet.devices[0].ref)
            assert created.status_code == 201, created.text
            for _ in range(100):
                _, after = await scrape(core)
                verified = delta(
                    before, after, "core_verification_outcomes_total", outcome="verified"
                )
                retried = delta(before, after, "core_webhook_deliveries_total", outcome="retrying")
                if verified and retried:
                    break
                await asyncio.sleep(0.1)
    assert (verified, retried) == (1, 1)
