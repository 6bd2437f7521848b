"""Injected faults seen through a real gateway, a real broker and the control interfaces."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiomqtt
import httpx
import pytest
import pytest_asyncio

from proveniq_core.api.app import create_app
from proveniq_core.errors import LockerHardwareError, LockerTimeoutError, LockerUnreachableError
from proveniq_core.ledger import keys
from proveniq_core.locker.faults import parse_rule
from proveniq_core.locker.gateway import LockerGateway, parse_mqtt_url
from proveniq_core.locker.protocol import CONTROL_TOPIC
from proveniq_core.locker.simulator import LatencyProfile, LockerFleet, fleet_specs
from proveniq_core.service import Core
from tests.conftest import unique_prefix
from tests.helpers import eventually
from tests.integration.conftest import TENANT, first_ref


def new_id() -> str:
    return uuid.uuid4().hex


@pytest_asyncio.fixture
async def gateway(mqtt_url: str) -> AsyncIterator[LockerGateway]:
    gw = LockerGateway(mqtt_url)
    await gw.start()
    assert gw.connected
    yield gw
    await gw.stop()


@asynccontextmanager
async def fleet_of(
    mqtt_url: str, gateway: LockerGateway, n: int = 1
) -> AsyncIterator[tuple[LockerFleet, list[str]]]:
    """A running fleet of ``n`` lockers with refs unique to the test, all seen online."""
    specs = fleet_specs(n, unique_prefix())
    fleet = LockerFleet(mqtt_url, specs, LatencyProfile.instant(), seed=1)
    await fleet.start()
    try:
        for spec in specs:
            assert await gateway.wait_online(spec.ref, timeout=5)
        yield fleet, [spec.ref for spec in specs]
    finally:
        await fleet.stop()


def inject(fleet: LockerFleet, **fields: Any) -> None:
    fleet.faults.add(parse_rule(fields))


async def ping(gateway: LockerGateway, ref: str, *, timeout: float = 3, cid: str = "") -> float:
    """Send a ping; return how long the answer took, in seconds."""
    started = time.monotonic()
    await gateway.send(ref, "ping", command_id=cid or new_id(), timeout=timeout)
    return time.monotonic() - started


async def outcome(gateway: LockerGateway, ref: str, timeout: float = 0.3) -> str:
    """What one ping meets: ok, timeout, hardware_fault or unreachable."""
    try:
        await ping(gateway, ref, timeout=timeout)
    except LockerTimeoutError:
        return "timeout"
    except LockerHardwareError as exc:
        return exc.fault
    except LockerUnreachableError:
        return "unreachable"
    return "ok"


@asynccontextmanager
async def control_client(mqtt_url: str) -> AsyncIterator[aiomqtt.Client]:
    host, port = parse_mqtt_url(mqtt_url)
    async with aiomqtt.Client(host, port, identifier=f"test-control-{new_id()[:8]}") as client:
        yield client


async def test_delay_answers_late_and_a_resend_gets_the_first_answer(
    mqtt_url: str, gateway: LockerGateway
) -> None:
    """delay answers after delayMs; a resend after a timeout is answered when the first ends."""
    async with fleet_of(mqtt_url, gateway) as (fleet, (ref,)):
        inject(fleet, lockerRef=ref, fault="delay", delayMs=400, count=1)
        assert await ping(gateway, ref) >= 0.4
        assert await ping(gateway, ref) < 0.3  # count 1: the next command is back to normal

        inject(fleet, lockerRef=ref, fault="delay", delayMs=500, count=1)
        link_id = new_id()
        started = time.monotonic()
        with pytest.raises(LockerTimeoutError):
            await gateway.send(ref, "link", command_id=link_id, asset_id="a-1", timeout=0.2)
        result = await gateway.send(ref, "link", command_id=link_id, asset_id="a-1", timeout=3)
        elapsed = time.monotonic() - started
        device = fleet.device(ref)

    assert result == {"lockerId": device.locker_id}
    assert 0.5 <= elapsed < 1.0  # the resend waited for the first execution, no new delay
    assert device.commands["link"] == 1
    assert device.faults == {"delay": 2}


async def test_drop_never_answers_and_a_resend_is_a_new_attempt(
    mqtt_url: str, gateway: LockerGateway
) -> None:
    """drop: the gateway times out and the device does nothing; the same commandId later works."""
    async with fleet_of(mqtt_url, gateway) as (fleet, (ref,)):
        inject(fleet, lockerRef=ref, fault="drop", count=1)
        link_id = new_id()
        with pytest.raises(LockerTimeoutError):
            await gateway.send(ref, "link", command_id=link_id, asset_id="a-1", timeout=0.3)
        device = fleet.device(ref)
        assert device.links == {}
        assert device.commands["link"] == 0

        result = await gateway.send(ref, "link", command_id=link_id, asset_id="a-1", timeout=3)
    assert result == {"lockerId": device.locker_id}
    assert device.links == {"a-1": device.locker_id}
    assert device.received["link"] == 2


async def test_hardware_fault_is_refused_without_acting(
    mqtt_url: str, gateway: LockerGateway
) -> None:
    """hardware_fault: the gateway raises LockerHardwareError and the locker links nothing."""
    async with fleet_of(mqtt_url, gateway) as (fleet, (ref,)):
        inject(fleet, lockerRef=ref, fault="hardware_fault", count=1)
        link_id = new_id()
        with pytest.raises(LockerHardwareError) as caught:
            await gateway.send(ref, "link", command_id=link_id, asset_id="a-1", timeout=3)
        device = fleet.device(ref)
        assert caught.value.fault == "hardware_fault"
        assert caught.value.asset_id == "a-1"
        assert device.links == {}

        # Not carried out, so not remembered: an operator's retry is attempted again.
        await gateway.send(ref, "link", command_id=link_id, asset_id="a-1", timeout=3)
    assert device.links == {"a-1": device.locker_id}


@pytest.mark.parametrize(("probability", "expected"), [(1, "timeout"), (0, "ok")])
async def test_flaky_extremes(
    mqtt_url: str, gateway: LockerGateway, probability: float, expected: str
) -> None:
    """flaky with probability 1 drops every command; with probability 0 it drops none."""
    async with fleet_of(mqtt_url, gateway) as (fleet, (ref,)):
        inject(fleet, lockerRef=ref, fault="flaky", probability=probability)
        assert [await outcome(gateway, ref) for _ in range(3)] == [expected] * 3
        assert len(fleet.faults) == 1  # no count: active until cleared


async def test_offline_disconnects_then_comes_back(mqtt_url: str, gateway: LockerGateway) -> None:
    """offline: presence goes offline, commands fail as unreachable, then it is online again."""
    async with fleet_of(mqtt_url, gateway) as (fleet, (ref,)):
        inject(fleet, lockerRef=ref, fault="offline", seconds=0.8, count=1)
        started = time.monotonic()
        with pytest.raises(LockerUnreachableError, match="offline"):
            await ping(gateway, ref, timeout=5)  # the command that switched it off is lost
        assert time.monotonic() - started < 0.5
        assert gateway.presence(ref) is False
        assert fleet.device(ref).client is None
        assert await outcome(gateway, ref) == "unreachable"

        assert await gateway.wait_online(ref, timeout=3)
        assert time.monotonic() - started >= 0.8
        assert await outcome(gateway, ref) == "ok"
        assert fleet.device(ref).faults == {"offline": 1}


async def test_offline_device_does_not_receive_commands(
    mqtt_url: str, gateway: LockerGateway
) -> None:
    """A command published while the device is off (clean session) is never delivered."""
    async with fleet_of(mqtt_url, gateway) as (fleet, (ref,)):
        inject(fleet, lockerRef=ref, fault="offline", seconds=0.5, count=1)
        assert await outcome(gateway, ref) == "unreachable"
        device = fleet.device(ref)
        received = device.received["ping"]
        host, port = parse_mqtt_url(mqtt_url)
        async with aiomqtt.Client(host, port) as raw:  # bypasses the gateway's presence check
            payload = json.dumps(
                {"v": 1, "commandId": new_id(), "type": "ping", "issuedAt": "2025-01-01T00:00:00Z"}
            )
            await raw.publish(f"proveniq/lockers/{ref}/commands", payload, qos=1)
        assert await gateway.wait_online(ref, timeout=3)
        await asyncio.sleep(0.2)
        assert device.received["ping"] == received


async def test_after_and_count_pick_the_commands(mqtt_url: str, gateway: LockerGateway) -> None:
    """after 2, count 2: the 3rd and 4th commands fail, the others succeed."""
    async with fleet_of(mqtt_url, gateway) as (fleet, (ref,)):
        inject(fleet, lockerRef=ref, fault="hardware_fault", after=2, count=2)
        seen = [await outcome(gateway, ref) for _ in range(6)]
        assert seen == ["ok", "ok", "hardware_fault", "hardware_fault", "ok", "ok"]
        assert len(fleet.faults) == 0


async def test_a_command_rule_picks_the_third_link(mqtt_url: str, gateway: LockerGateway) -> None:
    """command link, after 2, count 1: pings between links do not count; the 3rd link fails."""
    async with fleet_of(mqtt_url, gateway) as (fleet, (ref,)):
        inject(fleet, lockerRef=ref, fault="hardware_fault", after=2, count=1, command="link")
        seen = []
        for n in range(4):
            assert await outcome(gateway, ref) == "ok"
            try:
                await gateway.send(ref, "link", command_id=new_id(), asset_id=f"a-{n}", timeout=3)
                seen.append("ok")
            except LockerHardwareError as exc:
                seen.append(exc.fault)
        assert seen == ["ok", "ok", "hardware_fault", "ok"]
        assert len(fleet.device(ref).links) == 3
        assert len(fleet.faults) == 0


async def test_star_targets_every_locker(mqtt_url: str, gateway: LockerGateway) -> None:
    """A "*" rule counts and hits the commands of every locker in the fleet."""
    async with fleet_of(mqtt_url, gateway, 2) as (fleet, refs):
        inject(fleet, lockerRef="*", fault="hardware_fault", count=2)
        assert [await outcome(gateway, ref) for ref in refs] == ["hardware_fault"] * 2
        assert [await outcome(gateway, ref) for ref in refs] == ["ok", "ok"]


async def test_control_topic_adds_and_clears_rules(mqtt_url: str, gateway: LockerGateway) -> None:
    """A rule published on proveniq/sim/control takes effect; bad messages are ignored; clear."""
    async with fleet_of(mqtt_url, gateway, 2) as (fleet, refs):
        ref, other = refs
        async with control_client(mqtt_url) as control:
            for garbage in (b"{not json", b'{"lockerRef": "x", "fault": "delay"}', b"[]"):
                await control.publish(CONTROL_TOPIC, garbage, qos=1)
            rule = {"lockerRef": ref, "fault": "hardware_fault"}
            await control.publish(CONTROL_TOPIC, json.dumps(rule), qos=1)
            await eventually(lambda: len(fleet.faults) == 1)
            assert fleet.faults.list()[0].rule.lockerRef == ref

            assert await outcome(gateway, ref) == "hardware_fault"
            assert await outcome(gateway, ref) == "hardware_fault"
            assert await outcome(gateway, other) == "ok"

            await control.publish(CONTROL_TOPIC, json.dumps({"clear": True, "lockerRef": ref}))
            await eventually(lambda: len(fleet.faults) == 0)
            assert await outcome(gateway, ref) == "ok"


async def test_retained_control_messages_are_ignored(mqtt_url: str, gateway: LockerGateway) -> None:
    """A control message left retained on the broker is not replayed into a new fleet."""
    async with control_client(mqtt_url) as control:
        rule = {"lockerRef": f"{unique_prefix()}001", "fault": "drop"}
        await control.publish(CONTROL_TOPIC, json.dumps(rule), qos=1, retain=True)
        try:
            async with fleet_of(mqtt_url, gateway) as (fleet, _):
                await asyncio.sleep(0.2)
                assert len(fleet.faults) == 0
        finally:
            await control.publish(CONTROL_TOPIC, b"", qos=1, retain=True)


# HTTP: /sim/faults on a running Core (fixtures from tests/integration/conftest.py).


def _api(core: Core, key: str | None) -> httpx.AsyncClient:
    app = create_app(core)  # mounts /sim/faults
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://core.test", headers=headers
    )


async def test_http_faults_need_ops_write(core: Core) -> None:
    """/sim/faults answers 401 without a key and 403 without the ops:write scope."""
    reader = await keys.create_key(core.pool, TENANT, ["ops:read"], name="reader")
    async with _api(core, None) as anonymous, _api(core, reader) as weak:
        assert (await anonymous.get("/sim/faults")).status_code == 401
        denied = await weak.post("/sim/faults", json={"lockerRef": "*", "fault": "drop"})
        assert denied.status_code == 403
        assert denied.json()["error"]["code"] == "E_FORBIDDEN"
    assert core.fleet is not None and len(core.fleet.faults) == 0


async def test_http_faults_round_trip(core: Core, api_key: str) -> None:
    """POST stores a rule that hits the fleet's commands, GET lists it, DELETE clears it."""
    ref = first_ref(core)
    async with _api(core, api_key) as http:
        created = await http.post(
            "/sim/faults", json={"lockerRef": ref, "fault": "hardware_fault", "count": 1}
        )
        assert created.status_code == 201, created.text
        stored = created.json()
        assert stored["id"] and stored["lockerRef"] == ref and stored["count"] == 1

        invalid = await http.post("/sim/faults", json={"lockerRef": ref, "fault": "flaky"})
        assert invalid.status_code == 422
        assert invalid.json()["error"]["code"] == "E_VALIDATION"
        assert invalid.json()["error"]["details"] == [
            {"field": "probability", "problem": "required for fault 'flaky' (from 0 to 1)"}
        ]

        assert (await http.get("/sim/faults")).json() == {"items": [stored]}
        assert await core.gateway.wait_online(ref, timeout=5)
        assert await outcome(core.gateway, ref, timeout=3) == "hardware_fault"
        assert (await http.get("/sim/faults")).json() == {"items": []}  # count used up

        for body in (
            {"lockerRef": ref, "fault": "drop"},
            {"lockerRef": "*", "fault": "delay", "delayMs": 10},
        ):
            assert (await http.post("/sim/faults", json=body)).status_code == 201
        cleared = await http.delete("/sim/faults", params={"lockerRef": ref})
        assert cleared.json() == {"cleared": 1}
        assert [f["lockerRef"] for f in (await http.get("/sim/faults")).json()["items"]] == ["*"]
        assert (await http.delete("/sim/faults")).json() == {"cleared": 1}


async def test_http_faults_are_scoped_to_the_callers_lockers(core: Core, api_key: str) -> None:
    """ops:write acts on its tenant's lockers only: another tenant's locker is 404, '*' is 403
    without admin, and the list and a bare clear cover only the caller's rules."""
    ref = first_ref(core)
    own = await keys.create_key(core.pool, TENANT, ["ops:write"], name="acme ops")
    other = await keys.create_key(core.pool, "globex", ["ops:write"], name="globex ops")
    async with _api(core, api_key) as admin, _api(core, own) as acme, _api(core, other) as globex:
        everyone = await admin.post("/sim/faults", json={"lockerRef": "*", "fault": "drop"})
        assert everyone.status_code == 201
        mine = await acme.post("/sim/faults", json={"lockerRef": ref, "fault": "drop"})
        assert mine.status_code == 201, mine.text
        star = await acme.post("/sim/faults", json={"lockerRef": "*", "fault": "drop"})
        assert star.status_code == 403
        assert star.json()["error"]["code"] == "E_FORBIDDEN"
        assert "admin" in star.json()["error"]["message"]

        crossed = await globex.post("/sim/faults", json={"lockerRef": ref, "fault": "drop"})
        assert crossed.status_code == 404
        assert crossed.json()["error"]["code"] == "E_NOT_FOUND"
        assert (await globex.get("/sim/faults")).json() == {"items": []}
        assert (await globex.delete("/sim/faults")).json() == {"cleared": 0}
        assert (await globex.delete("/sim/faults", params={"lockerRef": ref})).status_code == 404
        assert (await globex.delete("/sim/faults", params={"lockerRef": "*"})).status_code == 403

        assert [f["lockerRef"] for f in (await acme.get("/sim/faults")).json()["items"]] == [ref]
        assert len((await admin.get("/sim/faults")).json()["items"]) == 2
        assert (await acme.delete("/sim/faults")).json() == {"cleared": 1}
        assert [f["lockerRef"] for f in (await admin.get("/sim/faults")).json()["items"]] == ["*"]


async def test_http_faults_without_a_fleet_is_404(core: Core, api_key: str) -> None:
    """A process that simulates no fleet answers /sim/faults with 404 in the error envelope."""
    fleet, core.fleet = core.fleet, None
    try:
        async with _api(core, api_key) as http:
            response = await http.get("/sim/faults")
    finally:
        core.fleet = fleet
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "E_NOT_FOUND"
    assert response.json()["error"]["message"] == "no simulated fleet in this process"
