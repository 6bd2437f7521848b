"""Circuit breakers seen through the HTTP API: one faulty locker trips its own circuit only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from proveniq_core import db
from proveniq_core.api.app import create_app
from proveniq_core.errors import LedgerDownError, LedgerSaturatedError
from proveniq_core.ledger import keys
from proveniq_core.resilience.breaker import LEDGER, LOCKER, CircuitBreaker, State
from proveniq_core.service import BOOTSTRAP_FILE, BOOTSTRAP_TENANT, Core, ensure_bootstrap_key
from tests.integration.conftest import TENANT, core_running


@pytest_asyncio.fixture
async def core(database_url: str, mqtt_url: str, tmp_path: Path) -> AsyncIterator[Core]:
    """A Core whose requests outwait the locker's own 0.3 s timeout, so silence is a failure."""
    async with core_running(
        database_url, mqtt_url, tmp_path, link_sync_budget_ms=5000, locker_command_timeout=0.3
    ) as c:
        yield c


def refs(core: Core) -> list[str]:
    assert core.fleet is not None
    return [device.ref for device in core.fleet.devices]


def sent_links(core: Core, ref: str) -> int:
    """How many link commands the device has received."""
    assert core.fleet is not None
    return int(core.fleet.snapshot()[ref]["received"].get("link", 0))


async def register(client: httpx.AsyncClient, ref: str) -> httpx.Response:
    return await client.post(
        "/api/assets", json={"name": "Rolex 16610", "category": "watch", "lockerRef": ref}
    )


async def circuits(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    resp = await client.get("/api/ops/circuits")
    assert resp.status_code == 200, resp.text
    return {item["name"]: item for item in resp.json()["items"]}


def as_key(core: Core, key: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(core)), base_url="http://t", headers=headers
    )


async def test_a_silent_locker_trips_its_own_circuit_only(
    core: Core, client: httpx.AsyncClient
) -> None:
    """A locker that never answers opens locker:<ref> after the thresholds; then its links are
    deferred without a command sent, the other lockers still link (201), and a reset closes it."""
    faulty, *others = refs(core)
    resp = await client.post("/sim/faults", json={"lockerRef": faulty, "fault": "drop"})
    assert resp.status_code == 201, resp.text

    # The seed's locker circuit: at least 10 calls (volume) and 5 failures in the window.
    timed_out = await asyncio.gather(
        *(register(client, faulty) for _ in range(LOCKER.volume_threshold))
    )
    assert [(r.status_code, r.json()["reason"]) for r in timed_out] == [
        (202, "E_LOCKER_TIMEOUT")
    ] * LOCKER.volume_threshold
    seen = await circuits(client)
    assert seen[f"locker:{faulty}"]["state"] == "open"
    assert seen[f"locker:{faulty}"]["openedAt"] is not None
    assert 0 < seen[f"locker:{faulty}"]["retryAfter"] <= LOCKER.timeout
    assert seen["locker"]["state"] == "closed"  # the broker is fine
    assert seen["locker"]["failures"] == 0
    assert seen["ledger"]["state"] == "closed"

    sent = sent_links(core, faulty)
    assert sent == LOCKER.volume_threshold
    refused = await register(client, faulty)
    assert refused.status_code == 202, refused.text
    assert refused.json()["status"] == "pending_link"
    assert refused.json()["reason"] == "E_LOCKER_UNREACHABLE"
    assert sent_links(core, faulty) == sent  # refused by the circuit: nothing was published

    for ref in others:
        linked = await register(client, ref)
        assert linked.status_code == 201, linked.text
        assert sent_links(core, ref) == 1
    seen = await circuits(client)
    assert [seen[f"locker:{ref}"]["state"] for ref in others] == ["closed"] * len(others)
    assert seen[f"locker:{faulty}"]["state"] == "open"

    assert (await client.delete("/sim/faults")).status_code == 200
    reset = await client.post(f"/api/ops/circuits/locker:{faulty}/reset")
    assert reset.status_code == 200, reset.text
    assert reset.json()["name"] == f"locker:{faulty}"
    assert reset.json()["state"] == "closed"
    assert reset.json()["openedAt"] is None
    assert (await circuits(client))[f"locker:{faulty}"]["state"] == "closed"
    again = await register(client, faulty)
    assert again.status_code == 201, again.text
    assert sent_links(core, faulty) == sent + 1


async def test_answers_that_say_nothing_about_reachability_trip_nothing(
    core: Core, client: httpx.AsyncClient
) -> None:
    """Validation errors (422), a conflict (409) and hardware-fault answers (502), each more
    often than any threshold, leave every circuit closed with no failure counted."""
    ref = refs(core)[0]
    for _ in range(LOCKER.volume_threshold):
        invalid = await client.post(
            "/api/assets", json={"name": "", "category": "watch", "lockerRef": ref}
        )
        assert invalid.status_code == 422
        assert invalid.json()["error"]["code"] == "E_VALIDATION"
        duplicate = await client.post(
            "/api/lockers", json={"lockerRef": ref, "site": {"lat": 0, "lon": 0}, "geofenceM": 50}
        )
        assert duplicate.status_code == 409, duplicate.text

    resp = await client.post("/sim/faults", json={"lockerRef": ref, "fault": "hardware_fault"})
    assert resp.status_code == 201
    faults = await asyncio.gather(*(register(client, ref) for _ in range(LOCKER.volume_threshold)))
    assert [r.json()["error"]["code"] for r in faults] == ["E_LOCKER_HARDWARE"] * len(faults)
    assert sent_links(core, ref) == LOCKER.volume_threshold  # each one reached the device

    seen = await circuits(client)
    assert {name: c["state"] for name, c in seen.items()} == dict.fromkeys(
        ["ledger", "locker", f"locker:{ref}"], "closed"
    )
    assert [c["failures"] for c in seen.values()] == [0, 0, 0]
    assert seen["ledger"]["callsInWindow"] > 0  # the database answered all along


async def test_circuits_api_needs_its_scopes_and_known_names(
    core: Core, client: httpx.AsyncClient
) -> None:
    """ops:read lists, ops:write resets; 401 without a key, 403 without the scope, 404 for an
    unknown circuit; ?state= filters the list."""
    reader = await keys.create_key(core.pool, TENANT, ["ops:read"])
    stranger = await keys.create_key(core.pool, TENANT, ["assets:read"])
    async with as_key(core, reader) as http:
        assert [c["name"] for c in (await http.get("/api/ops/circuits")).json()["items"]] == [
            "ledger"
        ]
        forbidden = await http.post("/api/ops/circuits/ledger/reset")
        assert forbidden.status_code == 403
        assert forbidden.json()["error"]["code"] == "E_FORBIDDEN"
    async with as_key(core, stranger) as http:
        assert (await http.get("/api/ops/circuits")).status_code == 403
    async with as_key(core, None) as http:
        assert (await http.get("/api/ops/circuits")).status_code == 401

    unknown = await client.post("/api/ops/circuits/locker:nowhere/reset")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "E_NOT_FOUND"
    assert (await client.post("/api/ops/circuits/ledger/reset")).json()["state"] == "closed"
    assert (await client.get("/api/ops/circuits", params={"state": "open"})).json() == {"items": []}
    assert (await client.get("/api/ops/circuits", params={"state": "ajar"})).status_code == 422


async def test_circuits_are_scoped_to_the_callers_lockers(
    core: Core, client: httpx.AsyncClient
) -> None:
    """Without admin a key lists the fleet circuits and its tenant's device circuits only,
    resets only the latter (another tenant's is 404, a fleet circuit 403); admin sees all."""
    acme_ref = refs(core)[0]
    globex = await keys.create_key(core.pool, "globex", ["ops:read", "ops:write"])
    acme = await keys.create_key(core.pool, TENANT, ["ops:read", "ops:write"])
    async with as_key(core, globex) as http:
        site = {"lockerRef": "globex-locker-1", "site": {"lat": 1.0, "lon": 2.0}, "geofenceM": 50}
        assert (await http.post("/api/lockers", json=site)).status_code == 201
    for ref in (acme_ref, "globex-locker-1"):
        core.breakers.get(f"locker:{ref}", LOCKER)

    async with as_key(core, globex) as http:
        seen = set(await circuits(http))
        assert "locker:globex-locker-1" in seen and f"locker:{acme_ref}" not in seen
        crossed = await http.post(f"/api/ops/circuits/locker:{acme_ref}/reset")
        assert crossed.status_code == 404
        assert crossed.json()["error"]["code"] == "E_NOT_FOUND"
        fleet = await http.post("/api/ops/circuits/ledger/reset")
        assert fleet.status_code == 403
        assert "admin" in fleet.json()["error"]["message"]
        own = await http.post("/api/ops/circuits/locker:globex-locker-1/reset")
        assert own.status_code == 200 and own.json()["state"] == "closed"
    async with as_key(core, acme) as http:
        seen = set(await circuits(http))
        assert f"locker:{acme_ref}" in seen and "locker:globex-locker-1" not in seen
        crossed = await http.post("/api/ops/circuits/locker:globex-locker-1/reset")
        assert crossed.status_code == 404
        assert (await http.post(f"/api/ops/circuits/locker:{acme_ref}/reset")).status_code == 200
    assert {f"locker:{acme_ref}", "locker:globex-locker-1", "ledger"} <= set(await circuits(client))
    assert (await client.post("/api/ops/circuits/locker:globex-locker-1/reset")).status_code == 200


async def test_the_ledger_circuit_refuses_without_the_pool_and_probes_once(pool: db.Pool) -> None:
    """Open: a refusal never asks the pool for a connection. Half-open: the probing task's
    nested connections ride on its one permit while another task is refused, and the probe's
    success counts once."""
    now = [0.0]
    breaker = CircuitBreaker("ledger", db.LEDGER_BREAKER, clock=lambda: now[0])
    db.guard(pool, breaker)
    for _ in range(LEDGER.volume_threshold):
        with breaker.acquire() as permit:
            permit.record_failure(LedgerDownError())
    assert breaker.state is State.OPEN

    asked = pool.get_stats().get("requests_num", 0)
    with pytest.raises(LedgerDownError) as refused:
        async with db.connection(pool):
            pass
    assert refused.value.retry_after == LEDGER.timeout
    assert pool.get_stats().get("requests_num", 0) == asked

    now[0] += LEDGER.timeout
    inside, done = asyncio.Event(), asyncio.Event()

    async def probe() -> None:
        try:
            async with db.transaction(pool) as conn:
                await conn.execute("SELECT 1")
                async with db.connection(pool) as nested:
                    await nested.execute("SELECT 1")
                inside.set()
                await done.wait()
        finally:
            inside.set()  # a failed probe is reported by ``await probing`` below

    probing = asyncio.create_task(probe())
    await inside.wait()
    with pytest.raises(LedgerDownError):
        async with db.connection(pool):
            pass
    done.set()
    await probing
    assert breaker.snapshot()["successes"] == 1

    async with db.connection(pool) as conn:
        await conn.execute("SELECT 1")
    assert breaker.state is State.CLOSED


async def test_a_saturated_pool_sheds_load_without_opening_the_ledger_circuit(
    database_url: str,
) -> None:
    """One connection, 0.3 s to wait for it: callers that time out while others are served
    get ``LedgerSaturatedError`` (503, retry in 1 s) and the circuit stays closed. Callers
    that time out while nobody is served (a hung server) are counted, and open it."""
    small = await db.open_pool(database_url, min_size=1, max_size=1, timeout=0.3)
    await small.wait(timeout=10)
    breaker = CircuitBreaker("ledger", db.LEDGER_BREAKER)
    db.guard(small, breaker)
    try:

        async def busy_caller() -> None:
            async with db.connection(small) as conn:
                await conn.execute("SELECT pg_sleep(0.1)")

        outcomes = await asyncio.gather(*(busy_caller() for _ in range(12)), return_exceptions=True)
        shed = [o for o in outcomes if isinstance(o, LedgerSaturatedError)]
        assert shed, outcomes
        assert all(o is None or isinstance(o, LedgerSaturatedError) for o in outcomes), outcomes
        assert 0 < outcomes.count(None) < len(outcomes)
        assert shed[0].code == "E_LEDGER_DOWN" and shed[0].retry_after == 1.0
        assert shed[0].details == {"reason": "saturated"}
        assert breaker.state is State.CLOSED
        assert breaker.snapshot()["failures"] == 0

        release = asyncio.Event()

        async def hung() -> None:  # holds the only connection, as a stuck query would
            async with db.connection(small):
                await release.wait()

        holder = asyncio.create_task(hung())
        await asyncio.sleep(0.05)
        waits = 0
        while breaker.state is State.CLOSED and waits < 2 * LEDGER.volume_threshold:
            with pytest.raises(LedgerDownError) as down:
                async with db.connection(small):
                    pass
            assert not isinstance(down.value, LedgerSaturatedError)
            waits += 1
        assert breaker.state is State.OPEN
        assert waits >= LEDGER.failure_threshold
        release.set()
        await holder
    finally:
        await small.close()


async def test_the_bootstrap_key_holds_the_admin_scope(pool: db.Pool, tmp_path: Path) -> None:
    """The bootstrap key has every scope, admin too; a kept key that lacks one is replaced."""
    older = await keys.create_key(pool, BOOTSTRAP_TENANT, ["ops:read", "ops:write"])
    (tmp_path / BOOTSTRAP_FILE).write_text(older + "\n")
    made = await ensure_bootstrap_key(pool, tmp_path)
    assert made.created and made.token != older
    principal = await keys.authenticate(pool, made.token)
    assert principal is not None and "admin" in principal.scopes
    assert not (await ensure_bootstrap_key(pool, tmp_path)).created
