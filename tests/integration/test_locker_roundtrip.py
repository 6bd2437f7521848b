"""Gateway and simulated lockers talking through a real MQTT broker."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import math
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import aiomqtt
import pytest
import pytest_asyncio
from PIL import Image, ImageStat

from proveniq_core.embedded import EmbeddedBroker
from proveniq_core.errors import LockerHardwareError, LockerTimeoutError, LockerUnreachableError
from proveniq_core.locker.gateway import LockerGateway, parse_mqtt_url
from proveniq_core.locker.protocol import (
    Reply,
    ReplyError,
    commands_topic,
    decode_command,
    encode,
    replies_topic,
)
from proveniq_core.locker.simulator import (
    LatencyProfile,
    LockerFleet,
    SimulatedLocker,
    fleet_specs,
)
from tests.helpers import eventually


def unique_specs(n: int = 1) -> list[SimulatedLocker]:
    """Refs no other test (or run) on the shared broker uses."""
    return fleet_specs(n, prefix=f"t{uuid.uuid4().hex[:8]}-locker-")


def new_id() -> str:
    return uuid.uuid4().hex


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest_asyncio.fixture
async def gateway(mqtt_url: str) -> AsyncIterator[LockerGateway]:
    gw = LockerGateway(mqtt_url)
    await gw.start()
    assert gw.connected
    yield gw
    await gw.stop()


@asynccontextmanager
async def running(
    mqtt_url: str,
    specs: list[SimulatedLocker],
    profile: LatencyProfile | None = None,
    gateway: LockerGateway | None = None,
) -> AsyncIterator[LockerFleet]:
    fleet = LockerFleet(mqtt_url, specs, profile or LatencyProfile.instant(), seed=1)
    await fleet.start()
    try:
        if gateway is not None:
            for spec in specs:
                assert await gateway.wait_online(spec.ref, timeout=5)
        yield fleet
    finally:
        await fleet.stop()


async def test_link_round_trip(mqtt_url: str, gateway: LockerGateway) -> None:
    """link returns the device's lockerId and the device records asset → locker."""
    specs = unique_specs()
    ref = specs[0].ref
    async with running(mqtt_url, specs, gateway=gateway) as fleet:
        result = await gateway.send(ref, "link", command_id=new_id(), asset_id="a-1", timeout=5)
        device = fleet.device(ref)
        assert result == {"lockerId": specs[0].locker_id}
        assert device.links == {"a-1": specs[0].locker_id}

        assert (
            await gateway.send(ref, "unlink", command_id=new_id(), asset_id="a-1", timeout=5) == {}
        )
        assert device.links == {}
        assert device.commands == {"link": 1, "unlink": 1}


async def test_repeated_command_id_is_answered_once(mqtt_url: str, gateway: LockerGateway) -> None:
    """Concurrent and later resends of a commandId get the first answer; the device acts once."""
    specs = unique_specs()
    ref = specs[0].ref
    async with running(mqtt_url, specs, LatencyProfile(300, 300), gateway) as fleet:
        link_id = new_id()
        first, second = await asyncio.gather(
            gateway.send(ref, "link", command_id=link_id, asset_id="a-1", timeout=5),
            gateway.send(ref, "link", command_id=link_id, asset_id="a-1", timeout=5),
        )
        evidence_id = new_id()
        evidence = await gateway.send(
            ref, "collect_evidence", command_id=evidence_id, asset_id="a-1", timeout=5
        )
        again = await gateway.send(
            ref, "collect_evidence", command_id=evidence_id, asset_id="a-1", timeout=5
        )
        device = fleet.device(ref)

    assert first == second == {"lockerId": specs[0].locker_id}
    assert again == evidence  # same jittered GPS and timestamp: not executed again
    assert device.commands == {"link": 1, "collect_evidence": 1}


async def test_snapshot_names_assets_linked_more_than_once(
    mqtt_url: str, gateway: LockerGateway
) -> None:
    """A resent commandId links once; two commands linking one asset show in ``relinked``."""
    specs = unique_specs()
    ref = specs[0].ref
    async with running(mqtt_url, specs, gateway=gateway) as fleet:
        once = new_id()
        for _ in range(2):
            await gateway.send(ref, "link", command_id=once, asset_id="a-1", timeout=5)
        assert fleet.snapshot()[ref]["relinked"] == {}
        await gateway.send(ref, "link", command_id=new_id(), asset_id="a-2", timeout=5)
        await gateway.send(ref, "link", command_id=new_id(), asset_id="a-2", timeout=5)
        assert fleet.snapshot()[ref]["relinked"] == {"a-2": 2}


async def test_collect_evidence_returns_a_real_photo(mqtt_url: str, gateway: LockerGateway) -> None:
    """Evidence holds a decodable JPEG matching its sha256, per-asset, and GPS near the site."""
    specs = unique_specs()
    spec = specs[0]
    async with running(mqtt_url, specs, gateway=gateway):
        results = [
            await gateway.send(
                spec.ref, "collect_evidence", command_id=new_id(), asset_id=asset, timeout=5
            )
            for asset in ("asset-a", "asset-b")
        ]

    hashes = set()
    for result in results:
        (photo,) = result["photos"]
        data = base64.b64decode(photo["data"])
        assert photo["contentType"] == "image/jpeg"
        assert hashlib.sha256(data).hexdigest() == photo["sha256"]
        image = Image.open(io.BytesIO(data))
        assert (image.format, image.size) == ("JPEG", (160, 120))
        assert ImageStat.Stat(image.convert("L")).stddev[0] > 10  # not a blank frame
        hashes.add(photo["sha256"])

        gps = result["gps"]
        dy = (gps["lat"] - spec.lat) * 111_320
        dx = (gps["lon"] - spec.lon) * 111_320 * math.cos(math.radians(spec.lat))
        assert math.hypot(dx, dy) < 5
        assert gps["accuracyM"] == 5.0
        taken = datetime.fromisoformat(result["timestamp"])
        assert taken.utcoffset() is not None
        assert abs((datetime.now(UTC) - taken).total_seconds()) < 30
    assert len(hashes) == 2


async def test_presence_follows_the_fleet(mqtt_url: str, gateway: LockerGateway) -> None:
    """A device is online once the fleet starts, offline after it stops, then unreachable."""
    specs = unique_specs(2)
    ref = specs[0].ref
    assert gateway.presence(ref) is None
    async with running(mqtt_url, specs, gateway=gateway):
        assert gateway.presence(ref) is True
        assert gateway.presence(specs[1].ref) is True
    await eventually(lambda: gateway.presence(ref) is False)

    started = time.monotonic()
    with pytest.raises(LockerUnreachableError):
        await gateway.send(ref, "ping", command_id=new_id(), timeout=5)
    assert time.monotonic() - started < 0.5


async def test_device_going_offline_fails_its_pending_sends(
    mqtt_url: str, gateway: LockerGateway
) -> None:
    """A send waiting on a device that goes offline fails as unreachable, not as a timeout."""
    specs = unique_specs()
    async with running(mqtt_url, specs, LatencyProfile(3000, 3000), gateway):
        pending = asyncio.create_task(
            gateway.send(specs[0].ref, "ping", command_id=new_id(), timeout=20)
        )
        await asyncio.sleep(0.2)
    started = time.monotonic()
    with pytest.raises(LockerUnreachableError, match="offline") as caught:
        await pending
    assert time.monotonic() - started < 2
    assert caught.value.details["lockerRef"] == specs[0].ref


PRESENCE = frozenset({"online", "offline", "core_gone"})
"""Gateway events about any locker's or Core process's presence, which other fleets and
processes on the broker cause."""


def _unless_presence(event: str, record: Callable[[], None]) -> None:
    if event not in PRESENCE:
        record()


async def test_unknown_locker_times_out(gateway: LockerGateway) -> None:
    """A command to a locker nobody serves raises LockerTimeoutError after its timeout."""
    events: list[str] = []
    # Presence of other lockers on a shared broker is not this command's concern.
    gateway.add_event_hook(
        lambda event, info: _unless_presence(event, lambda: events.append(event))
    )
    started = time.monotonic()
    with pytest.raises(LockerTimeoutError):
        await gateway.send(unique_specs()[0].ref, "ping", command_id=new_id(), timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 1.5
    assert events == ["command_sent", "timeout"]


async def test_closed_port_starts_degraded() -> None:
    """Against a closed port the gateway starts, reports disconnected and fails fast."""
    gateway = LockerGateway(f"mqtt://127.0.0.1:{closed_port()}", connect_timeout=2)
    started = time.monotonic()
    await gateway.start()
    try:
        assert time.monotonic() - started < 1.5
        assert not gateway.connected
        started = time.monotonic()
        with pytest.raises(LockerUnreachableError):
            await gateway.send("locker-001", "ping", command_id=new_id(), timeout=5)
        assert time.monotonic() - started < 0.1
    finally:
        await gateway.stop()


async def test_device_fault_and_noise(mqtt_url: str, gateway: LockerGateway) -> None:
    """Garbage is ignored, an unknown commandId is reported as unmatched; an ok=false reply
    is a LockerHardwareError."""
    ref = unique_specs()[0].ref
    host, port = parse_mqtt_url(mqtt_url)
    events: list[tuple[str, dict[str, Any]]] = []
    gateway.add_event_hook(
        lambda event, info: _unless_presence(event, lambda: events.append((event, info)))
    )

    async def fake_device(client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if message.topic.value != commands_topic(ref):
                continue  # amqtt also pushes retained messages of other subscriptions
            assert isinstance(message.payload, bytes)
            command = decode_command(message.payload)
            noise = [
                b"{not json",
                b'{"v": 1, "commandId": "x", "ok": true}',
                encode(Reply(commandId=new_id(), ok=True, result={})),
                encode(
                    Reply(
                        commandId=command.commandId,
                        ok=False,
                        error=ReplyError(code="hardware_fault", detail="motor stalled"),
                    )
                ),
            ]
            for payload in noise:
                await client.publish(replies_topic(ref), payload, qos=1)
            # Done by itself: on Python 3.11, asyncio.wait_for (inside aiomqtt's publish) can
            # swallow a cancel that lands as the PUBACK arrives, and the loop would go on.
            return

    async with aiomqtt.Client(host, port, identifier=f"fake-{ref}") as client:
        await client.subscribe(commands_topic(ref), qos=1)
        device = asyncio.create_task(fake_device(client))
        try:
            with pytest.raises(LockerHardwareError) as caught:
                await gateway.send(ref, "link", command_id=new_id(), asset_id="a-9", timeout=5)
        finally:
            device.cancel()
            await asyncio.gather(device, return_exceptions=True)

    assert caught.value.fault == "hardware_fault"
    assert caught.value.message == "motor stalled"
    assert caught.value.asset_id == "a-9"
    # The unknown commandId is passed on (the shadow keeps it if a parked saga waits on it).
    assert [e for e, _ in events] == ["command_sent", "unmatched_reply", "reply"]
    assert events[1][1]["reply"].commandId != caught.value.details["commandId"]
    assert events[2][1]["ok"] is False
    assert gateway.connected  # the garbage did not break the connection loop


async def test_broker_loss_fails_pending_and_reconnects() -> None:
    """Losing the broker fails in-flight sends as unreachable; the gateway reconnects itself."""
    broker = EmbeddedBroker(None)  # an open amqtt broker this test can stop and start again
    await broker.start()
    events: list[str] = []
    gateway = LockerGateway(broker.url, on_event=lambda event, info: events.append(event))
    await gateway.start()
    try:
        assert gateway.connected
        pending = asyncio.create_task(
            gateway.send("nobody-home", "ping", command_id=new_id(), timeout=30)
        )
        await eventually(lambda: "command_sent" in events)
        await broker.stop()
        with pytest.raises(LockerUnreachableError):
            await asyncio.wait_for(pending, 5)
        assert not gateway.connected

        await broker.start()  # the same port again
        await eventually(lambda: gateway.connected, within=10)
        assert events.count("connected") == 2
    finally:
        await gateway.stop()
        await broker.stop()


class FreezableProxy:
    """A TCP proxy to the broker that can go silent: it keeps the connections open and
    drops every byte, as a network partition does (no FIN, no RST)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.frozen = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self._writers.append(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    if not self.frozen:
                        dst.write(data)

        pipes = [
            asyncio.create_task(pipe(reader, up_writer)),
            asyncio.create_task(pipe(up_reader, writer)),
        ]
        try:  # either side hanging up ends the pair, as a real connection would
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
            writer.close()
            up_writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        for writer in self._writers:
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def test_a_silent_broker_is_noticed_within_the_keepalive() -> None:
    """A partition that leaves the TCP connection open (no FIN) is noticed when the broker's
    ping answer is missing, about 1.5 keepalives, and in-flight sends fail as unreachable
    rather than waiting out their own timeout."""
    proxy = FreezableProxy(("127.0.0.1", 1883))
    await proxy.start()
    events: list[str] = []
    gateway = LockerGateway(
        f"mqtt://127.0.0.1:{proxy.port}",
        keepalive=2,
        on_event=lambda event, info: events.append(event),
    )
    await gateway.start()
    try:
        await eventually(lambda: gateway.connected)
        pending = asyncio.create_task(
            gateway.send("nobody-home", "ping", command_id=new_id(), timeout=60)
        )
        await eventually(lambda: "command_sent" in events)
        proxy.frozen = True
        # About 1.5 keepalives (3 s); the bound leaves room for a loaded machine and still
        # tells it from aiomqtt's default keepalive (60 s, noticed after about 90 s).
        await eventually(lambda: not gateway.connected, within=30)
        with pytest.raises(LockerUnreachableError):
            await asyncio.wait_for(pending, 5)
    finally:
        await gateway.stop()
        await proxy.close()
