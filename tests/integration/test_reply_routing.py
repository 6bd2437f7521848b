"""Replies reach the Core process that asked, not every process (docs/architecture.md §4).

Each command carries ``replyTo``, a topic under the device's own replies topic naming the
process that sent it, and only that process receives the answer. When a process goes, the
others hear it (its retained presence is cleared) and the sagas it was waiting for ask
again. A device that ignores ``replyTo`` answers on ``.../replies``, which every process
receives, as before.
"""

from __future__ import annotations

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

Events = list[tuple[str, dict[str, Any]]]
Start = Callable[..., Any]


def new_id() -> str:
    return uuid.uuid4().hex


@pytest_asyncio.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as s:
        yield s


async def gateway(stack: AsyncExitStack, mqtt_url: str, events: Events) -> LockerGateway:
    """A Core process's gateway whose replies, unmatched replies and the processes it saw
    go land in ``events``."""
    gw = LockerGateway(mqtt_url)
    gw.add_event_hook(
        lambda event, info: (
            events.append((event, info))
            if event in ("reply", "unmatched_reply", "core_gone")
            else None
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


def of(events: Events, ref: str) -> Events:
    """The events about ``ref``'s commands (the broker is shared with other tests)."""
    return [(e, i) for e, i in events if i.get("lockerRef") == ref]


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

    assert [event for event, _ in of(mine, ref)] == ["reply"] * 10
    assert of(others, ref) == []
    assert lockers.device(ref).received["ping"] == 10


async def test_the_other_processes_hear_that_a_process_is_gone(
    mqtt_url: str, stack: AsyncExitStack
) -> None:
    """A process that stops (or dies: the broker's will clears its presence) is reported
    gone to the others, which then ask again for the sagas it waited on."""
    survivor: Events = []
    leaving = await gateway(stack, mqtt_url, [])
    watcher = await gateway(stack, mqtt_url, survivor)
    await eventually(lambda: leaving.process_id in watcher.live_processes(), "seen online")

    await leaving.stop()

    gone = await eventually(
        lambda: [i for e, i in survivor if e == "core_gone"], "the process reported gone"
    )
    assert [i["process"] for i in gone] == [leaving.process_id]
    assert leaving.process_id not in watcher.live_processes()


async def test_a_late_answer_to_a_live_process_is_its_own_to_hand_over(
    mqtt_url: str, stack: AsyncExitStack
) -> None:
    """A command that timed out here is answered late: this process hands the answer over
    to the shadow; the other process never sees it."""
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

    taken = await eventually(lambda: unmatched(of(mine, ref)), "the late answer handed over")
    assert [(i["reply"].commandId, i["handover"]) for i in taken] == [(command, True)]
    assert of(others, ref) == []


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
    assert [event for event, _ in of(mine, ref)] == ["reply"]
    taken = await eventually(lambda: unmatched(of(others, ref)), "the other process's copy")
    assert [(i["reply"].commandId, i["handover"]) for i in taken] == [(command, False)]
