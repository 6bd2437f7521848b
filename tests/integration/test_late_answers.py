"""A locker's answer that comes late is a fact the ledger follows, and operators never wait on it.

The hardening found the seed lab's delayed link thrown away: the request answered 202, the
command timed out, the device answered "linked" a few seconds later and the answer was
dropped, so the ledger said ``pending_link`` while the locker held the asset until the next
retry, minutes later; an operator's retry held the HTTP request for the whole command
timeout. Here each path plays out in seconds, with the retry timer set far away (600 s) so
that only the device's answer can move the asset.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from proveniq_core.config import Settings
from proveniq_core.ledger import keys
from proveniq_core.locker.faults import parse_rule
from proveniq_core.locker.simulator import LatencyProfile, LockerFleet, fleet_specs
from proveniq_core.service import REWAKE_AFTER, Core, register_fleet, running
from tests.conftest import unique_prefix
from tests.helpers import eventually
from tests.integration.conftest import TENANT, api_client, core_running, first_ref

# The request waits 0.2 s for the locker, a command may take 1 s, and the retry timer is
# 10 minutes out: an asset that links within the test linked because the device answered.
LATE: dict[str, Any] = {
    "link_sync_budget_ms": 200,
    "locker_command_timeout": 1.0,
    "retry_base": 600.0,
    "saga_compensation_retry_base": 0.3,
}
Make = Callable[..., Awaitable[tuple[Core, httpx.AsyncClient]]]


@pytest_asyncio.fixture
async def make(database_url: str, mqtt_url: str, tmp_path: Path) -> AsyncIterator[Make]:
    async with AsyncExitStack() as stack:

        async def start(**overrides: Any) -> tuple[Core, httpx.AsyncClient]:
            core = await stack.enter_async_context(
                core_running(database_url, mqtt_url, tmp_path, **(LATE | overrides))
            )
            key = await keys.create_key(core.pool, TENANT, keys.SCOPES, name="late answers")
            # A locker first seen online makes its parked links due (twice, REWAKE_AFTER
            # apart): let that pass, or it races the operator actions under test.
            assert await core.gateway.wait_online(first_ref(core), timeout=10)
            await asyncio.sleep(REWAKE_AFTER + 0.3)
            return core, await stack.enter_async_context(api_client(core, key))

        yield start


async def register(http: httpx.AsyncClient, ref: str) -> str:
    resp = await http.post(
        "/api/assets", json={"name": "Rolex 5513", "category": "watch", "lockerRef": ref}
    )
    assert resp.status_code == 202, resp.text
    assert resp.json()["status"] == "pending_link"
    return str(resp.json()["assetId"])


async def asset(http: httpx.AsyncClient, asset_id: str) -> dict[str, Any]:
    resp = await http.get(f"/api/assets/{asset_id}")
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


async def linked(http: httpx.AsyncClient, asset_id: str) -> bool:
    return (await asset(http, asset_id))["status"] in {"linked", "verified", "manual_review"}


async def entry_of(http: httpx.AsyncClient, asset_id: str) -> dict[str, Any]:
    resp = await http.get("/api/ops/retry-queue", params={"assetId": asset_id})
    assert resp.status_code == 200, resp.text
    (entry,) = resp.json()["items"]
    return dict(entry)


def delay_links(fleet: LockerFleet, ref: str, ms: int) -> None:
    fleet.faults.add(parse_rule({"lockerRef": ref, "fault": "delay", "delayMs": ms, "count": 1}))


async def test_an_answer_after_the_command_timeout_links_the_asset(make: Make) -> None:
    """The device answers 1.5 s after a command that timed out at 1 s: the asset is linked
    by that answer, with no second command, and its retry-queue entry is resolved."""
    core, http = await make()
    assert core.fleet is not None
    ref = first_ref(core)
    delay_links(core.fleet, ref, 1500)

    asset_id = await register(http, ref)
    await eventually(lambda: linked(http, asset_id), "the late answer adopted", within=10)
    device = core.fleet.device(ref)
    assert device.received["link"] == 1
    assert asset_id in device.links
    assert (await entry_of(http, asset_id))["status"] == "resolved"
    assert (await asset(http, asset_id))["lockerId"] == device.locker_id


async def test_the_shadow_shows_what_core_asked_and_what_the_device_answered(
    make: Make,
) -> None:
    """The parked command and its late answer are kept per locker."""
    core, http = await make()
    assert core.fleet is not None
    ref = first_ref(core)
    delay_links(core.fleet, ref, 1500)
    asset_id = await register(http, ref)
    await eventually(lambda: linked(http, asset_id), "the late answer adopted", within=10)

    resp = await http.get(f"/api/lockers/{ref}/shadow")
    assert resp.status_code == 200, resp.text
    (command,) = resp.json()["commands"]
    assert (command["type"], command["assetId"]) == ("link", asset_id)
    assert command["reply"]["ok"] is True
    assert command["reply"]["result"]["lockerId"] == core.fleet.device(ref).locker_id
    assert command["repliedAt"] > command["askedAt"]
    unknown = await http.get("/api/lockers/no-such-locker/shadow")
    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["error"]["code"] == "E_NOT_FOUND"


async def test_the_shadow_keeps_the_presence_the_device_last_reported(make: Make) -> None:
    """A locker that goes offline and comes back is recorded so, each time."""
    core, http = await make()
    assert core.fleet is not None
    ref = first_ref(core)

    async def reported() -> str | None:
        resp = await http.get(f"/api/lockers/{ref}/shadow")
        assert resp.status_code == 200, resp.text
        status = resp.json()["reportedStatus"]
        return str(status) if status else None

    core.fleet.device(ref).switch_off(1.0)
    await eventually(lambda: _is(reported, "offline"), "offline recorded")
    await eventually(lambda: _is(reported, "online"), "online recorded again")


async def _is(read: Callable[[], Awaitable[str | None]], expected: str) -> bool:
    return await read() == expected


async def test_an_answer_to_a_process_that_died_is_adopted_by_another(
    database_url: str, mqtt_url: str, tmp_path: Path
) -> None:
    """The API process that sent the command stops before the device answers: its answer
    would go to nobody. The worker process, running all along, hears it is gone and asks
    again under the same commandId; the device answers it once, and the asset is linked (the
    link carried out once on the device)."""
    fleet = LockerFleet(mqtt_url, fleet_specs(1, unique_prefix()), LatencyProfile.instant())
    await fleet.start()

    def settings(role: str) -> Settings:
        fields: dict[str, Any] = LATE | {"poll_interval": 0.2, "role": role}
        return Settings(home=tmp_path, database_url=database_url, mqtt_url=mqtt_url, **fields)

    try:
        ref = fleet.devices[0].ref
        async with running(settings("worker")) as worker:
            await register_fleet(worker.pool, fleet, TENANT)
            key = await keys.create_key(worker.pool, TENANT, keys.SCOPES, name="restart")
            delay_links(fleet, ref, 3000)
            async with running(settings("api")) as api, api_client(api, key) as http:
                asset_id = await register(http, ref)
            async with api_client(worker, key) as http:
                assert (await asset(http, asset_id))["status"] == "pending_link"
                await eventually(lambda: linked(http, asset_id), "linked by the worker")
                assert fleet.device(ref).linked[asset_id] == 1
                assert fleet.device(ref).received["link"] == 2  # asked again by the worker
                assert (await entry_of(http, asset_id))["status"] == "resolved"
    finally:
        await fleet.stop()


async def test_an_operator_retry_answers_within_the_budget_and_the_answer_still_links(
    make: Make,
) -> None:
    """The seed lab: an operator retries at once while the device is still working on the
    link. The retry answers 202 with the entry retrying (not after the command timeout),
    and the device's late answer links the asset."""
    # The command may take 3 s and the device answers at 5 s: the retry comes while the
    # command is in flight, and its own wait (the 0.2 s budget) ends long before.
    core, http = await make(locker_command_timeout=3.0)
    assert core.fleet is not None
    ref = first_ref(core)
    delay_links(core.fleet, ref, 5000)
    asset_id = await register(http, ref)
    entry = await entry_of(http, asset_id)

    retry = await http.post(f"/api/ops/retry-queue/{entry['id']}/retry")
    assert retry.status_code == 202, retry.text
    assert (retry.json()["status"], retry.json()["assetStatus"]) == ("retrying", "pending_link")

    await eventually(lambda: linked(http, asset_id), "linked by the late answer", within=15)
    assert core.fleet.device(ref).received["link"] == 1
    assert (await entry_of(http, asset_id))["status"] == "resolved"


async def test_cancelling_a_stuck_asset_answers_202_and_the_undo_finishes_later(
    make: Make,
) -> None:
    """A locker that answers nothing: the cancel answers at once with the saga compensating,
    and once the locker answers again the undo finishes (the asset ends compensated)."""
    core, http = await make()
    assert core.fleet is not None
    ref = first_ref(core)
    core.fleet.faults.add(parse_rule({"lockerRef": ref, "fault": "drop", "count": 1000}))
    asset_id = await register(http, ref)

    cancel = await http.post(f"/api/ops/assets/{asset_id}/cancel")
    assert cancel.status_code == 202, cancel.text
    assert cancel.json()["sagaStatus"] == "compensating"
    assert (await asset(http, asset_id))["status"] == "pending_link"

    core.fleet.faults.clear(ref)

    async def compensated() -> bool:
        return bool((await asset(http, asset_id))["status"] == "compensated")

    await eventually(compensated, "the undo finished in the background", within=20)
    assert asset_id not in core.fleet.device(ref).links
    assert (await entry_of(http, asset_id))["status"] == "discarded"


async def test_a_retry_the_device_answers_within_the_budget_answers_200_resolved(
    make: Make,
) -> None:
    """When the device answers in time the retry reports where it ended, as before."""
    core, http = await make(link_sync_budget_ms=1000, locker_command_timeout=0.3)
    assert core.fleet is not None
    ref = first_ref(core)
    core.fleet.faults.add(parse_rule({"lockerRef": ref, "fault": "drop", "count": 1}))
    resp = await http.post(
        "/api/assets", json={"name": "Omega 2998", "category": "watch", "lockerRef": ref}
    )
    assert resp.status_code == 202, resp.text
    asset_id = resp.json()["assetId"]
    entry = await entry_of(http, asset_id)

    retry = await http.post(f"/api/ops/retry-queue/{entry['id']}/retry")
    assert retry.status_code == 200, retry.text
    assert (retry.json()["status"], retry.json()["assetStatus"]) == ("resolved", "linked")


async def test_a_request_starved_of_its_lease_answers_202_with_the_asset(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process too starved to renew its lease loses the saga mid-request to a worker,
    which finishes it: the client gets 202 with the asset's id (reason E_CONFLICT), not a
    409 that names nothing, and the asset is linked by the worker."""
    # The device answers at 3 s, well inside the request's wait (5 s) and the command's
    # (5 s), and long after the 1 s lease that nothing renews: a worker has claimed the saga
    # by then, and the request's checkpoint after the link is refused.
    core, http = await make(saga_lease=1.0, link_sync_budget_ms=5000, locker_command_timeout=5.0)
    assert core.fleet is not None
    ref = first_ref(core)

    async def starved() -> int:
        return 0  # no renewal goes out, as when the event loop or the pool is starved

    monkeypatch.setattr(core.engine, "renew", starved)
    delay_links(core.fleet, ref, 3000)
    resp = await http.post(
        "/api/assets", json={"name": "Nikon F", "category": "camera", "lockerRef": ref}
    )
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["reason"] == "E_CONFLICT"
    assert body["assetId"]
    await eventually(lambda: linked(http, body["assetId"]), "finished by the worker")
    assert core.fleet.device(ref).linked[body["assetId"]] == 1
