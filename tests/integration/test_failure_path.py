"""Every failure code of docs/architecture.md §3 through the real API, driven by real faults.

Each test registers assets over HTTP against a running Core, with faults injected into the
simulated lockers (``FaultBook``, as ``POST /sim/faults`` does) or into the real database
(a trigger, a lock), and checks what a client and an operator see: the status and envelope,
the asset's final state, its retry-queue entry, the ops alert, and what the locker holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest_asyncio

from proveniq_core import db
from proveniq_core.ledger import keys
from proveniq_core.locker.faults import parse_rule
from proveniq_core.service import Core
from tests.helpers import eventually
from tests.integration.conftest import TENANT, api_client, core_running, first_ref

# Short clocks so each path plays out in about a second: the request waits 0.2 s for the
# locker, a command may take 0.6 s, and retries start 1 s after the partial commit.
FAST = {
    "link_sync_budget_ms": 200,
    "locker_command_timeout": 0.6,
    "retry_base": 1.0,
    "post_commit_timeout": 0.3,
}
Make = Callable[..., Awaitable[tuple[Core, httpx.AsyncClient]]]


@pytest_asyncio.fixture
async def make(database_url: str, mqtt_url: str, tmp_path: Path) -> AsyncIterator[Make]:
    """Start a Core with ``FAST`` clocks and the given overrides (``role="api"``: no
    workers, so only the test drives the retry queue) and an admin client on it."""
    async with AsyncExitStack() as stack:

        async def start(**overrides: Any) -> tuple[Core, httpx.AsyncClient]:
            core = await stack.enter_async_context(
                core_running(database_url, mqtt_url, tmp_path, **(FAST | overrides))
            )
            key = await keys.create_key(core.pool, TENANT, keys.SCOPES, name="failure tests")
            return core, await stack.enter_async_context(api_client(core, key))

        yield start


def inject(core: Core, **rule: Any) -> None:
    assert core.fleet is not None
    core.fleet.faults.add(parse_rule(rule))


def device(core: Core, ref: str) -> Any:
    assert core.fleet is not None
    return core.fleet.device(ref)


async def register(http: httpx.AsyncClient, ref: str, name: str = "Leica M6") -> httpx.Response:
    return await http.post(
        "/api/assets", json={"name": name, "category": "camera", "lockerRef": ref}
    )


async def status_of(http: httpx.AsyncClient, asset_id: str) -> str:
    resp = await http.get(f"/api/assets/{asset_id}")
    assert resp.status_code == 200, resp.text
    return str(resp.json()["status"])


LINKED = frozenset({"linked", "verified", "rejected", "manual_review"})  # linked, or past it


async def wait_linked(http: httpx.AsyncClient, asset_id: str) -> None:
    """Wait until the asset is linked (with workers running it may be verified already)."""

    async def reached() -> bool:
        return await status_of(http, asset_id) in LINKED

    await eventually(reached)


async def entry(core: Core, asset_id: str) -> db.Row:
    row = await core.retry_queue.for_asset(asset_id)
    assert row is not None, f"no retry-queue entry for {asset_id}"
    return row


async def wait_due(core: Core, asset_id: str) -> None:
    async def due() -> bool:
        row = await entry(core, asset_id)
        return row["next_retry_at"] is not None and row["next_retry_at"] <= datetime.now(UTC)

    await eventually(due)


async def alerts(http: httpx.AsyncClient, code: str) -> list[dict[str, Any]]:
    resp = await http.get("/api/ops/alerts", params={"code": code})
    assert resp.status_code == 200, resp.text
    return list(resp.json()["items"])


def assert_envelope(resp: httpx.Response, status: int, code: str, severity: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == code
    assert error["severity"] == severity
    assert error["message"]
    assert error["requestId"] == resp.headers["x-request-id"]
    return dict(error)


async def sql(core: Core, statement: str) -> None:
    async with db.connection(core.pool) as conn:
        await conn.execute(statement)


# -- E_LOCKER_TIMEOUT ------------------------------------------------------------------------


async def test_lab_exercise_third_link_times_out_then_processing_the_entry_links_it(
    make: Make,
) -> None:
    """The seed's lab exercise: the 3rd link gets no answer → 202 pending_link → a queue
    entry with retryCount 0 → processNext → linked, with exactly one link on the locker."""
    core, http = await make(role="api")
    ref = first_ref(core)
    inject(core, lockerRef=ref, fault="drop", after=2, count=1)

    first, second = await register(http, ref, "one"), await register(http, ref, "two")
    assert (first.status_code, second.status_code) == (201, 201)

    third = await register(http, ref, "three")
    assert third.status_code == 202, third.text
    body = third.json()
    assert body["status"] == "pending_link"
    assert body["reason"] == "E_LOCKER_TIMEOUT"
    assert body["retryAt"] is not None
    asset_id = body["assetId"]
    assert await status_of(http, asset_id) == "pending_link"
    pending = await entry(core, asset_id)
    assert (pending["retry_count"], pending["status"]) == (0, "pending")
    assert pending["locker_ref"] == ref
    assert pending["last_error"]["code"] == "E_LOCKER_TIMEOUT"

    await wait_due(core, asset_id)
    processed = await core.retry_queue.process_next()
    assert processed is not None
    assert processed["status"] == "resolved"
    assert await status_of(http, asset_id) == "linked"
    assert asset_id in device(core, ref).links
    assert len(device(core, ref).links) == 3
    assert await core.retry_queue.process_next() is None  # nothing else due


async def test_a_late_answer_completes_the_link_without_a_second_command(make: Make) -> None:
    """The reply comes after the request's budget but within the command timeout: the
    request answers 202, and the late success links the asset by itself."""
    core, http = await make()
    ref = first_ref(core)
    inject(core, lockerRef=ref, fault="delay", delayMs=400, count=1)

    resp = await register(http, ref)
    assert resp.status_code == 202, resp.text
    asset_id = resp.json()["assetId"]
    await wait_linked(http, asset_id)
    assert device(core, ref).received["link"] == 1
    assert (await entry(core, asset_id))["status"] == "resolved"


async def test_retries_back_off_then_the_entry_is_exhausted_with_an_alert(make: Make) -> None:
    """A locker that never answers: each retry counts, the delay doubles, and after
    ``retry_max_attempts`` the entry is exhausted and an ops alert is raised."""
    core, http = await make(role="api", retry_base=0.2, retry_max_attempts=2)
    ref = first_ref(core)
    inject(core, lockerRef=ref, fault="drop")

    resp = await register(http, ref)
    assert resp.status_code == 202, resp.text
    asset_id = resp.json()["assetId"]

    await wait_due(core, asset_id)
    once = await core.retry_queue.process_next()
    assert once is not None
    assert (once["retry_count"], once["status"]) == (1, "pending")
    waits = once["next_retry_at"] - once["updated_at"]
    assert waits.total_seconds() > 0.3  # 0.2 s doubled

    await wait_due(core, asset_id)
    twice = await core.retry_queue.process_next()
    assert twice is not None
    assert (twice["retry_count"], twice["status"]) == (2, "exhausted")
    assert twice["next_retry_at"] is None
    assert await status_of(http, asset_id) == "pending_link"

    [alert] = await alerts(http, "E_RETRY_EXHAUSTED")
    assert alert["severity"] == "critical"
    assert alert["subject"]["assetId"] == asset_id
    assert await core.retry_queue.process_next() is None  # exhausted: no more automatic tries


# -- E_LOCKER_UNREACHABLE --------------------------------------------------------------------


async def test_an_offline_locker_is_retried_as_soon_as_it_comes_back(make: Make) -> None:
    """The device drops off: registrations to it answer 202 at once, and when it announces
    itself online again the workers link them without waiting for the 5-minute backoff."""
    core, http = await make(retry_base=300.0)
    ref = first_ref(core)
    inject(core, lockerRef=ref, fault="offline", seconds=1.5, count=1)

    lost = await register(http, ref, "lost in flight")
    assert lost.status_code == 202, lost.text
    await eventually(lambda: _offline(core, ref))
    refused = await register(http, ref, "while offline")
    assert refused.status_code == 202, refused.text
    assert refused.json()["reason"] == "E_LOCKER_UNREACHABLE"

    assert core.fleet is not None
    other = await register(http, core.fleet.devices[1].ref, "elsewhere")
    assert other.status_code == 201, other.text

    for resp in (lost, refused):
        await wait_linked(http, resp.json()["assetId"])
    links = device(core, ref).links
    assert set(links) == {lost.json()["assetId"], refused.json()["assetId"]}


async def _offline(core: Core, ref: str) -> bool:
    return core.gateway.presence(ref) is False


# -- E_LOCKER_HARDWARE -----------------------------------------------------------------------


async def test_a_hardware_fault_answers_502_and_holds_the_asset_for_an_operator(
    make: Make,
) -> None:
    core, http = await make()
    ref = first_ref(core)
    inject(core, lockerRef=ref, fault="hardware_fault", count=1)

    resp = await register(http, ref)
    error = assert_envelope(resp, 502, "E_LOCKER_HARDWARE", "critical")
    assert error["retryable"] is False
    assert error["message"] == "Hardware error detected. Operations team notified."
    assert error["details"][0]["lockerRef"] == ref
    asset_id = error["assetId"]
    assert await status_of(http, asset_id) == "link_failed"

    [alert] = await alerts(http, "E_LOCKER_HARDWARE")
    assert alert["severity"] == "critical"
    assert alert["subject"] == {"assetId": asset_id, "lockerRef": ref}
    await asyncio.sleep(1.5)  # past the retry base: nothing retries it automatically
    assert device(core, ref).received["link"] == 1
    assert await status_of(http, asset_id) == "link_failed"
    assert device(core, ref).links == {}

    [saga] = (await http.get("/api/ops/sagas")).json()["items"]  # a held saga lists too
    assert (saga["status"], saga["runAt"]) == ("running", None)
    view = (await http.get(f"/api/ops/sagas/{saga['sagaId']}")).json()
    assert view["runAt"] is None
    assert view["steps"][-1]["status"] == "deferred"
    assert await core.engine.next_due_in() is None  # held: due never, and no error either


# -- E_LEDGER_CONSTRAINT ---------------------------------------------------------------------


async def test_an_unknown_locker_is_refused_with_nothing_written_and_no_command(
    make: Make,
) -> None:
    core, http = await make()
    resp = await register(http, "no-such-locker")
    error = assert_envelope(resp, 422, "E_LEDGER_CONSTRAINT", "error")
    assert error.get("assetId") is None
    page = (await http.get("/api/assets")).json()
    assert page["items"] == []
    assert core.fleet is not None
    assert all(sum(d.received.values()) == 0 for d in core.fleet.devices)


# -- E_LEDGER_CONFLICT -----------------------------------------------------------------------

CONFLICTS = """
CREATE SEQUENCE conflict_n;
CREATE FUNCTION conflict_first() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF nextval('conflict_n') <= {n} THEN
        RAISE EXCEPTION 'injected write conflict' USING ERRCODE = 'serialization_failure';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER conflict_first BEFORE INSERT ON assets
    FOR EACH ROW EXECUTE FUNCTION conflict_first();
"""


async def test_a_write_conflict_is_retried_internally_and_succeeds(make: Make) -> None:
    core, http = await make()
    await sql(core, CONFLICTS.format(n=2))
    resp = await register(http, first_ref(core))
    assert resp.status_code == 201, resp.text


async def test_a_persistent_conflict_answers_409_after_three_retries(make: Make) -> None:
    core, http = await make()
    await sql(core, CONFLICTS.format(n=1000))
    resp = await register(http, first_ref(core))
    error = assert_envelope(resp, 409, "E_LEDGER_CONFLICT", "warning")
    assert error["retryable"] is True
    assert error.get("assetId") is None
    assert (await http.get("/api/assets")).json()["items"] == []
    assert device(core, first_ref(core)).received["link"] == 0

    [saga] = (await http.get("/api/ops/sagas")).json()["items"]
    steps = (await http.get(f"/api/ops/sagas/{saga['sagaId']}")).json()["steps"]
    attempts = [s for s in steps if s["step"] == "create_ledger_record"]
    assert [s["attempt"] for s in attempts] == [1, 2, 3, 4]
    assert {s["errorCode"] for s in attempts} == {"E_LEDGER_CONFLICT"}


# -- E_PARTIAL_COMMIT ------------------------------------------------------------------------

REFUSE_STATUS = """
CREATE FUNCTION refuse_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IN ({statuses}) THEN
        RAISE EXCEPTION 'injected: % refused', NEW.status USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_status BEFORE UPDATE ON assets
    FOR EACH ROW EXECUTE FUNCTION refuse_status();
"""


async def test_a_failure_after_the_link_compensates_in_reverse_order(make: Make) -> None:
    """The ledger refuses the `linked` status after the locker linked: the link is undone
    on the device, then the record is voided; the client sees the cause with the asset."""
    core, http = await make()
    await sql(core, REFUSE_STATUS.format(statuses="'linked'"))
    ref = first_ref(core)
    resp = await register(http, ref)
    error = assert_envelope(resp, 422, "E_LEDGER_CONSTRAINT", "error")
    asset_id = error["assetId"]
    assert await status_of(http, asset_id) == "compensated"
    assert device(core, ref).links == {}
    assert device(core, ref).received["unlink"] == 1

    [saga] = (await http.get("/api/ops/sagas")).json()["items"]
    view = (await http.get(f"/api/ops/sagas/{saga['sagaId']}")).json()
    assert view["status"] == "compensated"
    undone = [s["step"] for s in view["steps"] if s["phase"] == "compensate"]
    assert undone == ["link_locker", "create_ledger_record"]


async def test_a_compensation_that_keeps_failing_ends_in_an_alert(make: Make) -> None:
    """Neither `linked` nor `compensated` can be written: the request answers 500
    E_PARTIAL_COMMIT, compensation is retried in rounds, then the saga ends
    compensation_failed with a critical alert — never silently dropped."""
    core, http = await make(saga_compensation_rounds=2, saga_compensation_retry_base=0.2)
    await sql(core, REFUSE_STATUS.format(statuses="'linked', 'compensated'"))
    resp = await register(http, first_ref(core))
    error = assert_envelope(resp, 500, "E_PARTIAL_COMMIT", "critical")
    asset_id = error["assetId"]

    async def failed() -> bool:
        page = (await http.get("/api/ops/sagas", params={"status": "compensation_failed"})).json()
        return len(page["items"]) == 1

    await eventually(failed)
    [alert] = await alerts(http, "E_PARTIAL_COMMIT")
    assert alert["severity"] == "critical"
    assert await status_of(http, asset_id) == "pending"  # as far as it could be undone


# -- E_TIMEOUT_POST_COMMIT -------------------------------------------------------------------


async def test_a_slow_verification_insert_answers_201_with_a_warning(
    make: Make, database_url: str
) -> None:
    """The verifications table is locked past the post-commit timeout: the asset is linked
    and the request answers 201 with a warning; the verification is queued once the lock
    goes, on the saga's timer."""
    core, http = await make()
    ref = first_ref(core)
    conn = await psycopg.AsyncConnection.connect(database_url)
    async with conn, conn.transaction():
        await conn.execute("LOCK TABLE verifications IN SHARE MODE")
        resp = await register(http, ref)
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["status"] == "linked"
    assert body["warnings"] == [
        {
            "code": "E_TIMEOUT_POST_COMMIT",
            "message": "Operation completed. Some updates may be delayed.",
        }
    ]

    async def queued() -> bool:
        asset = (await http.get(f"/api/assets/{body['assetId']}")).json()
        verification = asset.get("verification") or {}
        return bool(verification.get("verificationId") == body["verificationId"])

    await eventually(queued)


# -- Idempotency-Key on POST /api/assets ---------------------------------------------------


async def test_a_retried_registration_with_its_key_replays_the_202(make: Make) -> None:
    """A client that lost the answer to a deferred registration retries with the same key:
    it gets the same 202 and no second asset or command."""
    core, http = await make(role="api")
    ref = first_ref(core)
    inject(core, lockerRef=ref, fault="drop")
    headers = {"Idempotency-Key": "order-7781"}
    body = {"name": "Leica M6", "category": "camera", "lockerRef": ref}

    first = await http.post("/api/assets", json=body, headers=headers)
    again = await http.post("/api/assets", json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert len((await http.get("/api/assets")).json()["items"]) == 1
    assert device(core, ref).received["link"] == 1

    other = await http.post("/api/assets", json=body | {"name": "Leica M3"}, headers=headers)
    assert_envelope(other, 422, "E_IDEMPOTENCY_MISMATCH", "error")
