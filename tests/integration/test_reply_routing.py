"""Replies reach the Core process that asked, not every process (docs/architecture.md §4).

Each command carries ``replyTo``, a topic under the device's own replies topic naming the
process that sent it. Other processes get at most a copy (one of them, through a shared
subscription, on a broker that has them), which they drop unparsed while the process it
was meant for lives, and take up when it is gone. A device that ignores ``replyTo`` answers
on ``.../replies``, which every process receives, as before.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest
import pytest_asyncio

from proveniq_core.errors import LockerTimeoutError
from proveniq_core.locker.faults import parse_rule
from proveniq_core.locker.gateway import LockerGateway
from proveniq_core.locker.simulator import LatencyProfile, LockerFleet, fleet_specs
from tests.helpers import eventually

SHARED = os.environ.get("PROVENIQ_TEST_MQTT") != "embedded"  # Mosquitto has $share; amqtt not
Events = list[tuple[str, dict[str, Any]]]
Start = Callable[..., Any]


def new_id() -> str:
    return uuid.uuid4().hex


@pytest_asyncio.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as s:
        yield s


async def gateway(stack: AsyncExitStack, mqtt_url: str, events: Events) -> LockerGateway:
    """A Core process's gateway whose replies and unmatched replies land in ``events``."""
    gw = LockerGateway(mqtt_url, shared=SHARED)
    gw.add_event_hook(
        lambda event, info: (
            events.append((event, info)) if event in ("reply", "unmatched_reply") else None
        )
    )
    await gw.start()
    assert gw.connected
    stack.push_async_callback(gw.stop)
    return gw


async def fleet(stack: AsyncExitStack, mqtt_url: str, *, reply_to: bool = True) -> LockerFleet:
    specs = fleet_specs(1, prefix=f"t{uuid.uuid4().hex[:8]}-locker-")
    f = LockerFleet(mqtt_url, specs, LatencyProfile.instant(), reply_to=reply_to)
    await f.start()
    stack.push_async_callback(f.stop)
    return f


def unmatched(events: Events) -> list[dict[str, Any]]:
    return [info for event, info in events if event == "unmatched_reply"]


async def test_each_reply_is_taken_by_the_process_that_asked_only(
    mqtt_url: str, stack: AsyncExitStack
) -> None:
    """Two processes; the one that asks gets every answer, the other parses none."""
    mine: Events = []
    others: Events = []
    asker = await gateway(stack, mqtt_url, mine)
    await gateway(stack, mqtt_url, others)
    lockers = await fleet(stack, mqtt_url)
    ref = lockers.devices[0].ref
    assert await asker.wait_online(ref, timeout=5)

    for _ in range(10):
        assert await asker.send(ref, "ping", command_id=new_id(), timeout=5) == {}

    assert [event for event, _ in mine] == ["reply"] * 10
    assert others == []
    assert lockers.device(ref).received["ping"] == 10


async def test_a_reply_meant_for_a_process_that_is_gone_is_taken_up_by_another(
    mqtt_url: str, stack: AsyncExitStack
) -> None:
    """The asking process goes before the device answers: another process gets the answer
    and hands it over (the shadow keeps it for the saga that waits on it)."""
    survivor: Events = []
    asker = await gateway(stack, mqtt_url, [])
    await gateway(stack, mqtt_url, survivor)
    lockers = await fleet(stack, mqtt_url)
    ref = lockers.devices[0].ref
    assert await asker.wait_online(ref, timeout=5)
    lockers.faults.add(parse_rule({"lockerRef": ref, "fault": "delay", "delayMs": 1500}))

    command = new_id()
    with pytest.raises(LockerTimeoutError):
        await asker.send(ref, "link", command_id=command, asset_id="a-1", timeout=0.3)
    await asker.stop()  # its presence cleared (a crash: the broker's will clears it)

    taken = await eventually(lambda: unmatched(survivor), "the answer taken up")
    assert [(i["reply"].commandId, i["handover"]) for i in taken] == [(command, True)]
    assert taken[0]["reply"].result == {"lockerId": lockers.devices[0].locker_id}


async def test_a_late_answer_to_a_live_process_is_its_own_to_hand_over(
    mqtt_url: str, stack: AsyncExitStack
) -> None:
    """A command that timed out here is answered late: this process hands the answer over;
    the other process, seeing the asker alive, leaves it alone."""
    mine: Events = []
    others: Events = []
    asker = await gateway(stack, mqtt_url, mine)
    await gateway(stack, mqtt_url, others)
    lockers = await fleet(stack, mqtt_url)
    ref = lockers.devices[0].ref
    assert await asker.wait_online(ref, timeout=5)
    lockers.faults.add(parse_rule({"lockerRef": ref, "fault": "delay", "delayMs": 800}))

    command = new_id()
    with pytest.raises(LockerTimeoutError):
        await asker.send(ref, "link", command_id=command, asset_id="a-2", timeout=0.2)

    taken = await eventually(lambda: unmatched(mine), "the late answer handed over")
    assert [(i["reply"].commandId, i["handover"]) for i in taken] == [(command, True)]
    assert others == []


async def test_a_device_that_ignores_reply_to_is_answered_as_before(
    mqtt_url: str, stack: AsyncExitStack
) -> None:
    """An older device answers on .../replies: the asker takes it; the other process sees
    it unmatched and keeps it only for a parked saga (no handover: the asker has it)."""
    mine: Events = []
    others: Events = []
    asker = await gateway(stack, mqtt_url, mine)
    await gateway(stack, mqtt_url, others)
    lockers = await fleet(stack, mqtt_url, reply_to=False)
    ref = lockers.devices[0].ref
    assert await asker.wait_online(ref, timeout=5)

    command = new_id()
    assert await asker.send(ref, "ping", command_id=command, timeout=5) == {}
    assert [event for event, _ in mine] == ["reply"]
    taken = await eventually(lambda: unmatched(others), "the other process's copy")
    assert [(i["reply"].commandId, i["handover"]) for i in taken] == [(command, False)]
