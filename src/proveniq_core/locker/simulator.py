"""Virtual lockers speaking protocol v1 over a real MQTT broker.

Each device has its own MQTT client (last will: retained ``offline``), answers every
command in its own task after a sampled latency, and answers a repeated ``commandId``
with its first answer. What a device does with a command is decided in one place,
``LockerFleet._decide``, which consults the fleet's ``FaultBook`` (``locker/faults.py``).
Rules arrive at run time on MQTT ``proveniq/sim/control`` or through ``fleet.faults``.

An injected fault leaves no memory of the command: a resend of a dropped, failed or
offline-lost ``commandId`` is a new attempt (which the rule may hit again while it lasts),
as if the command had never reached the device or had not been carried out.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import math
import os
import random
import statistics
import uuid
from collections import Counter, OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import structlog
from opentelemetry.trace import SpanKind
from PIL import Image, ImageDraw

from proveniq_core.config import mqtt_url_for_messages
from proveniq_core.locker.faults import (
    ActiveFault,
    EvidenceDefect,
    FaultBook,
    FaultRuleError,
    parse_control,
)
from proveniq_core.locker.gateway import (
    BACKOFF_MAX_S,
    BACKOFF_MIN_S,
    SOCKET_OPTIONS,
    cancel_and_wait,
    mqtt_credentials,
    parse_mqtt_url,
)
from proveniq_core.locker.protocol import (
    CONTROL_TOPIC,
    STATUS_OFFLINE,
    STATUS_ONLINE,
    Command,
    Reply,
    ReplyError,
    ReplyErrorCode,
    commands_topic,
    decode_command,
    encode,
    replies_topic,
    status_topic,
    validate_ref,
)
from proveniq_core.observability import tracing

log = structlog.get_logger(__name__)

_Z99 = statistics.NormalDist().inv_cdf(0.99)  # ≈ 2.3263
_M_PER_DEG_LAT = 111_320.0
_GPS_JITTER_M = 4.5
_GPS_ACCURACY_M = 5.0
_PHOTO_SIZE = (160, 120)
_ANSWERS_KEPT = 10_000  # per device; older commandIds would be executed again


@dataclass(frozen=True, slots=True)
class LatencyProfile:
    """Command latency: lognormal with median ``p50_ms`` and 99th percentile ``p99_ms``."""

    p50_ms: float
    p99_ms: float

    def __post_init__(self) -> None:
        if not 0 <= self.p50_ms <= self.p99_ms or not math.isfinite(self.p99_ms):
            raise ValueError(
                f"latency profile needs 0 <= p50 <= p99 (ms), got {self.p50_ms}:{self.p99_ms}"
            )

    @classmethod
    def instant(cls) -> LatencyProfile:
        """No latency at all."""
        return cls(0, 0)

    @classmethod
    def seed(cls) -> LatencyProfile:
        """The tail-latency locker profile: p50 500 ms, p99 5 s."""
        return cls(500, 5000)

    @classmethod
    def parse(cls, text: str) -> LatencyProfile:
        """Parse ``instant``, ``seed`` or ``P50:P99`` in milliseconds (e.g. ``200:2000``)."""
        spec = text.strip().lower()
        if spec == "instant":
            return cls.instant()
        if spec == "seed":
            return cls.seed()
        p50, sep, p99 = spec.partition(":")
        try:
            if not sep:
                raise ValueError("missing ':'")
            return cls(float(p50), float(p99))
        except ValueError as exc:
            raise ValueError(
                f"invalid latency profile {text!r}: expected 'instant', 'seed' or "
                f"'P50:P99' in milliseconds with 0 <= P50 <= P99, e.g. '200:2000' ({exc})"
            ) from None

    def sample(self, rng: random.Random) -> float:
        """Draw one latency, in seconds."""
        if self.p99_ms == 0:
            return 0.0
        if self.p50_ms == 0 or self.p50_ms == self.p99_ms:
            return self.p50_ms / 1000
        sigma = math.log(self.p99_ms / self.p50_ms) / _Z99
        return rng.lognormvariate(math.log(self.p50_ms / 1000), sigma)


@dataclass(frozen=True, slots=True)
class SimulatedLocker:
    """A virtual locker's spec: its ref, its site and its hardware id."""

    ref: str
    lat: float
    lon: float
    locker_id: str = ""  # derived from ref when empty

    def __post_init__(self) -> None:
        validate_ref(self.ref)
        if not self.locker_id:
            digest = hashlib.sha256(self.ref.encode()).hexdigest()[:8].upper()
            object.__setattr__(self, "locker_id", f"LKR-{digest}")


@dataclass(frozen=True, slots=True)
class Decision:
    """What a device does with one command: wait ``delay_s``, then answer (or not)."""

    delay_s: float
    answer: bool = True
    error: ReplyError | None = None  # answer ok=false with this instead of executing
    offline_s: float = 0.0  # instead: disconnect for this long (the command is lost)
    fault: ActiveFault | None = None  # the injected fault behind this decision
    defect: EvidenceDefect | None = None  # collect_evidence: spoil the evidence this way


class LockerDevice:
    """One running virtual locker: its links, counters and remembered answers."""

    def __init__(self, spec: SimulatedLocker) -> None:
        self.spec = spec
        self.links: dict[str, str] = {}  # assetId -> lockerId
        self.commands: Counter[str] = Counter()  # handled command types, duplicates excluded
        self.received: Counter[str] = Counter()  # every command received, duplicates included
        self.faults: Counter[str] = Counter()  # injected faults that hit a command, by kind
        self.linked: Counter[str] = Counter()  # links carried out, by assetId
        self.client: aiomqtt.Client | None = None  # set while connected
        self.offline_until: float | None = None  # loop time; set while switched off
        self._switch_off: asyncio.Future[None] | None = None  # armed while taking commands
        self._answers: OrderedDict[str, asyncio.Future[Reply]] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def ref(self) -> str:
        return self.spec.ref

    @property
    def locker_id(self) -> str:
        return self.spec.locker_id

    def remember(self, command_id: str, answer: asyncio.Future[Reply]) -> None:
        self._answers[command_id] = answer
        if len(self._answers) > _ANSWERS_KEPT:
            self._answers.popitem(last=False)

    def answer_for(self, command_id: str) -> asyncio.Future[Reply] | None:
        return self._answers.get(command_id)

    def forget(self, command_id: str) -> None:
        self._answers.pop(command_id, None)

    def track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def cancel_tasks(self) -> None:
        await asyncio.gather(*(cancel_and_wait(t) for t in list(self._tasks)))

    def switch_off(self, seconds: float) -> None:
        """Disconnect for ``seconds`` from now (extending an outage under way).

        The device's run loop carries it out: retained ``offline``, disconnect, wait,
        reconnect, ``online``.
        """
        until = asyncio.get_running_loop().time() + seconds
        self.offline_until = until if self.offline_until is None else max(self.offline_until, until)
        if self._switch_off is not None and not self._switch_off.done():
            self._switch_off.set_result(None)

    def arm_switch_off(self) -> asyncio.Future[None]:
        """A future that ``switch_off`` resolves, for the connection being served."""
        self._switch_off = asyncio.get_running_loop().create_future()
        return self._switch_off

    def disarm_switch_off(self) -> None:
        self._switch_off = None


class LockerFleet:
    """A set of virtual lockers, each with its own MQTT connection."""

    def __init__(
        self,
        mqtt_url: str,
        lockers: list[SimulatedLocker],
        profile: LatencyProfile,
        *,
        seed: int | None = None,
        connect_timeout: float = 10.0,
        faults: FaultBook | None = None,
        reply_to: bool = True,
    ) -> None:
        """A fleet of ``lockers``, connected by ``start``.

        ``seed`` makes latencies, GPS jitter and ``flaky`` draws reproducible. ``faults``
        holds the injected fault rules (default: a new, empty book). ``reply_to``: answer
        on a command's ``replyTo`` (False: as a device older than that field does).
        """
        self._honour_reply_to = reply_to
        self._url = mqtt_url
        self._host, self._port = parse_mqtt_url(mqtt_url)
        self._username, self._password = mqtt_credentials(mqtt_url)
        self._devices = {spec.ref: LockerDevice(spec) for spec in lockers}
        if len(self._devices) != len(lockers):
            raise ValueError("locker refs must be unique")
        self._profile = profile
        self._rng = random.Random(seed)
        # Its own random stream, so injecting faults does not shift the latencies drawn.
        self.faults = faults if faults is not None else FaultBook.seeded(seed)
        self._connect_timeout = connect_timeout
        self._runners: list[asyncio.Task[None]] = []
        self._last_photo: bytes | None = None  # the last unspoiled one: "duplicate" sends it

    @property
    def devices(self) -> list[LockerDevice]:
        return list(self._devices.values())

    def device(self, ref: str) -> LockerDevice:
        """The running device ``ref``; ``KeyError`` if the fleet has none."""
        return self._devices[ref]

    def snapshot(self) -> dict[str, Any]:
        """Every device's links, command counts and injected faults, as JSON-ready data.

        ``relinked``: the assets a device carried out a link for more than once, with how
        many times (a resent commandId is answered from memory and does not count).
        """
        return {
            d.ref: {
                "links": dict(d.links),
                "commands": dict(d.commands),
                "received": dict(d.received),
                "faults": dict(d.faults),
                "relinked": {a: n for a, n in d.linked.items() if n > 1},
            }
            for d in self._devices.values()
        }

    async def start(self) -> None:
        """Connect every device and publish it ``online``; listen on the control topic.

        Raises ``ConnectionError`` (after cleaning up) if any device, or the control
        listener, cannot connect.
        """
        if self._runners:
            return
        loop = asyncio.get_running_loop()
        firsts: dict[str, asyncio.Future[Exception | None]] = {
            ref: loop.create_future() for ref in self._devices
        }
        self._runners = [
            asyncio.create_task(self._run_device(d, firsts[d.ref]), name=f"sim-locker:{d.ref}")
            for d in self._devices.values()
        ]
        control_first: asyncio.Future[Exception | None] = loop.create_future()
        firsts[CONTROL_TOPIC] = control_first  # not a valid locker ref: no clash
        self._runners.append(
            asyncio.create_task(self._run_control(control_first), name="sim-locker-control")
        )
        outcomes: list[Exception | None] = []
        try:
            async with asyncio.timeout(self._connect_timeout):
                outcomes = await asyncio.gather(*firsts.values())
        except TimeoutError:
            outcomes = [TimeoutError(f"no connection after {self._connect_timeout:g} s")]
        failures = [o for o in outcomes if o is not None]
        if failures:
            await self.stop()
            where = mqtt_url_for_messages(self._url)
            raise ConnectionError(
                f"simulated lockers cannot connect to {where}: {failures[0]}"
            ) from failures[0]
        log.info(
            "locker.fleet_started",
            lockers=len(self._devices),
            url=mqtt_url_for_messages(self._url),
        )

    async def stop(self) -> None:
        """Abandon in-flight commands, publish retained ``offline``, disconnect."""
        runners, self._runners = self._runners, []
        if not runners:
            return
        devices = self._devices.values()
        await asyncio.gather(*(d.cancel_tasks() for d in devices))
        await asyncio.gather(*(_announce_offline(d) for d in devices))
        await asyncio.gather(*(cancel_and_wait(r) for r in runners))

    async def _run_device(
        self, device: LockerDevice, first: asyncio.Future[Exception | None]
    ) -> None:
        """Keep one device connected (except while switched off).

        Reports the outcome of the first connection attempt on ``first``.
        """
        loop = asyncio.get_running_loop()
        backoff = BACKOFF_MIN_S
        will = aiomqtt.Will(status_topic(device.ref), STATUS_OFFLINE, qos=1, retain=True)
        while True:
            if device.offline_until is not None:
                await asyncio.sleep(max(0.0, device.offline_until - loop.time()))
                device.offline_until = None
                backoff = BACKOFF_MIN_S
                log.info("locker.sim_back_online", locker_ref=device.ref)
            # Clean session (aiomqtt's default): commands sent while off are never delivered.
            client = aiomqtt.Client(
                self._host,
                self._port,
                identifier=f"proveniq-sim-{device.ref}",
                will=will,
                timeout=self._connect_timeout,
                socket_options=SOCKET_OPTIONS,
                username=self._username,
                password=self._password,
            )
            try:
                async with client:
                    await client.subscribe(commands_topic(device.ref), qos=1)
                    await client.publish(
                        status_topic(device.ref), STATUS_ONLINE, qos=1, retain=True
                    )
                    device.client = client
                    if not first.done():
                        first.set_result(None)
                    backoff = BACKOFF_MIN_S
                    await self._serve(device, client)
                    # Switched off: say so (a clean disconnect sends no last will), then leave.
                    device.client = None
                    await client.publish(
                        status_topic(device.ref), STATUS_OFFLINE, qos=1, retain=True
                    )
                    log.info("locker.sim_switched_off", locker_ref=device.ref)
            except aiomqtt.MqttError as exc:
                if not first.done():
                    first.set_result(exc)
                    return
                log.warning("locker.sim_disconnected", locker_ref=device.ref, error=str(exc))
            finally:
                device.client = None
            if device.offline_until is None:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _serve(self, device: LockerDevice, client: aiomqtt.Client) -> None:
        """Take commands until the device is switched off; ``MqttError`` if the link fails."""
        switch_off = device.arm_switch_off()
        receiver = asyncio.create_task(
            self._receive(device, client), name=f"sim-locker-receive:{device.ref}"
        )
        try:
            await asyncio.wait((receiver, switch_off), return_when=asyncio.FIRST_COMPLETED)
        finally:
            device.disarm_switch_off()
            if not receiver.done():
                await cancel_and_wait(receiver)
        if not receiver.cancelled():
            receiver.result()  # raises the MqttError that ended it
            raise aiomqtt.MqttError("message stream ended")  # the client closed under us

    async def _receive(self, device: LockerDevice, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            # amqtt 0.12 also pushes retained messages of other subscriptions.
            if message.topic.value == commands_topic(device.ref):
                device.track(asyncio.create_task(self._handle(device, message.payload)))

    async def _run_control(self, first: asyncio.Future[Exception | None]) -> None:
        """Apply the control messages published on ``proveniq/sim/control``.

        Every fleet on the broker applies every message (a ``"*"`` rule reaches them all).
        Retained messages are skipped: only what is published while the fleet runs counts.
        """
        backoff = BACKOFF_MIN_S
        identifier = f"proveniq-sim-control-{uuid.uuid4().hex[:12]}"
        while True:
            client = aiomqtt.Client(
                self._host,
                self._port,
                identifier=identifier,
                timeout=self._connect_timeout,
                socket_options=SOCKET_OPTIONS,
                username=self._username,
                password=self._password,
            )
            try:
                async with client:
                    await client.subscribe(CONTROL_TOPIC, qos=1)
                    if not first.done():
                        first.set_result(None)
                    backoff = BACKOFF_MIN_S
                    async for message in client.messages:
                        if message.topic.value != CONTROL_TOPIC:
                            continue  # amqtt 0.12: retained messages of other subscriptions
                        if message.retain:
                            # A stored message, not one published now: replaying it on every
                            # start would resurrect faults that were cleared since.
                            log.warning("locker.sim_control_retained_ignored")
                            continue
                        self._on_control(message.payload)
            except aiomqtt.MqttError as exc:
                if not first.done():
                    first.set_result(exc)
                    return
                log.warning("locker.sim_control_disconnected", error=str(exc))
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _on_control(self, payload: Any) -> None:
        if not isinstance(payload, bytes | str):
            log.warning("locker.sim_control_invalid", error="empty or non-text payload")
            return
        try:
            control = parse_control(payload)
        except FaultRuleError as exc:
            log.warning("locker.sim_control_invalid", error=str(exc), problems=exc.problems)
            return
        outcome = self.faults.apply(control)
        if isinstance(outcome, int):
            log.info("locker.sim_faults_cleared", locker_ref=control.lockerRef, cleared=outcome)
        else:
            log.info("locker.sim_fault_added", **outcome.view())

    async def _handle(self, device: LockerDevice, payload: Any) -> None:
        try:
            command = decode_command(payload)
        except ValueError as exc:
            log.warning("locker.sim_malformed_command", locker_ref=device.ref, error=str(exc))
            return
        parent = tracing.context_of(command.traceparent)
        if parent is None:
            await self._answer(device, command)
            return
        # The device's own time, from receiving the command to publishing its answer, in
        # the trace of the command that asked for it.
        attributes = {
            "locker.ref": device.ref,
            "locker.command": command.type,
            "locker.command_id": command.commandId,
        }
        with tracing.span(
            f"locker.device {command.type}", attributes, parent=parent, kind=SpanKind.SERVER
        ):
            await self._answer(device, command)

    async def _answer(self, device: LockerDevice, command: Command) -> None:
        """Answer one command: its first answer again for a repeated ``commandId``."""
        device.received[command.type] += 1
        answer = device.answer_for(command.commandId)
        if answer is None:
            decision = self._decide(device, command)
            if decision.fault is not None:
                device.faults[decision.fault.rule.fault] += 1
                log.info(
                    "locker.sim_fault_hit",
                    locker_ref=device.ref,
                    command_id=command.commandId,
                    fault=decision.fault.rule.fault,
                    fault_id=decision.fault.id,
                )
            if decision.offline_s > 0:
                device.switch_off(decision.offline_s)
                return
            if not decision.answer:
                return  # lost on the way: not remembered, so a resend is a new attempt
            answer = asyncio.get_running_loop().create_future()
            device.remember(command.commandId, answer)
            if decision.error is None:
                device.commands[command.type] += 1
            try:
                answer.set_result(await self._execute(device, command, decision))
            except asyncio.CancelledError:  # switched off mid-command: a resend runs it anew
                device.forget(command.commandId)
                answer.cancel()
                raise
            except Exception as exc:
                log.exception("locker.sim_command_failed", locker_ref=device.ref)
                answer.set_result(_failure(command, "hardware_fault", f"simulator error: {exc}"))
            if decision.error is not None:
                device.forget(command.commandId)  # not carried out: a resend tries again
        reply = await asyncio.shield(answer)
        await self._publish(device, reply, self._reply_topic(device, command))

    def _reply_topic(self, device: LockerDevice, command: Command) -> str:
        """Where to answer ``command``: its ``replyTo`` when this fleet honours it and the
        topic is under the device's own replies topic (a broker's ACL would refuse any
        other), else ``.../replies``."""
        own = replies_topic(device.ref)
        if self._honour_reply_to and command.replyTo and command.replyTo.startswith(own + "/"):
            return command.replyTo
        return own

    def _decide(self, device: LockerDevice, command: Command) -> Decision:
        """Choose what ``device`` does with ``command``: an injected fault, or normal service.

        Called once per new ``commandId``; without a fault, answer after the sampled latency.
        """
        hit = self.faults.decide(device.ref, command.type)
        if hit is None:
            return Decision(delay_s=self._profile.sample(self._rng))
        rule = hit.rule
        # The rule's validator guarantees the parameter of its kind is set.
        if rule.fault == "delay":
            return Decision(delay_s=(rule.delayMs or 0.0) / 1000, fault=hit)
        if rule.fault == "hardware_fault":
            error = ReplyError(code="hardware_fault", detail=f"injected fault {hit.id}")
            return Decision(delay_s=self._profile.sample(self._rng), error=error, fault=hit)
        if rule.fault == "offline":
            return Decision(delay_s=0.0, answer=False, offline_s=rule.seconds or 0.0, fault=hit)
        if rule.fault == "bad_evidence":
            delay = self._profile.sample(self._rng)
            return Decision(delay_s=delay, defect=rule.defect, fault=hit)
        return Decision(delay_s=0.0, answer=False, fault=hit)  # drop, or flaky's draw said drop

    async def _execute(self, device: LockerDevice, command: Command, decision: Decision) -> Reply:
        if decision.delay_s > 0:
            await asyncio.sleep(decision.delay_s)
        if decision.error is not None:
            return Reply(commandId=command.commandId, ok=False, error=decision.error)
        return self._apply(device, command, decision.defect)

    def _apply(
        self, device: LockerDevice, command: Command, defect: EvidenceDefect | None = None
    ) -> Reply:
        """Carry out ``command`` on the device's state and build the answer."""
        asset_id = command.assetId
        result: dict[str, Any]
        if command.type == "ping":
            result = {}
        elif command.type == "unlink":
            if asset_id is not None:
                device.links.pop(asset_id, None)
            result = {}
        elif asset_id is None:
            return _failure(command, "unknown_asset", f"{command.type} needs an assetId")
        elif command.type == "link":
            device.links[asset_id] = device.locker_id
            device.linked[asset_id] += 1
            result = {"lockerId": device.locker_id}
        else:
            result = self._evidence(device, asset_id, defect)
        return Reply(commandId=command.commandId, ok=True, result=result)

    def _evidence(
        self, device: LockerDevice, asset_id: str, defect: EvidenceDefect | None = None
    ) -> dict[str, Any]:
        """A photo of ``asset_id`` at the locker, now; ``defect`` spoils one aspect of it:
        a fix 2 km away or ±1 km imprecise, an hour old, a blank or undecodable photo, a
        hash claim that does not match, or the fleet's last good photo (of another asset)
        re-encoded."""
        photo = evidence_photo(asset_id)
        if defect is None:
            self._last_photo = photo
        elif defect == "duplicate" and self._last_photo is not None:
            photo = _reencode(self._last_photo)
        elif defect == "blank":
            photo = _blank_photo()
        elif defect == "undecodable":
            photo = b"\xff\xd8 this is not a JPEG"
        lat, lon = _jitter(device.spec.lat, device.spec.lon, self._rng)
        if defect == "gps_outside":
            lat += 2_000 / _M_PER_DEG_LAT
        taken = datetime.now(UTC) - (timedelta(hours=1) if defect == "stale" else timedelta())
        claimed = photo + b"tampered" if defect == "hash_mismatch" else photo
        return {
            "photos": [
                {
                    "sha256": hashlib.sha256(claimed).hexdigest(),
                    "contentType": "image/jpeg",
                    "data": base64.b64encode(photo).decode(),
                }
            ],
            "gps": {
                "lat": lat,
                "lon": lon,
                "accuracyM": 1_000.0 if defect == "low_accuracy" else _GPS_ACCURACY_M,
            },
            "timestamp": taken.isoformat(timespec="milliseconds"),
        }

    async def _publish(self, device: LockerDevice, reply: Reply, topic: str) -> None:
        client = device.client
        if client is None:
            log.warning("locker.sim_reply_lost", locker_ref=device.ref, reason="disconnected")
            return
        try:
            await client.publish(topic, encode(reply), qos=1)
        except aiomqtt.MqttError as exc:
            log.warning("locker.sim_reply_lost", locker_ref=device.ref, reason=str(exc))


async def _announce_offline(device: LockerDevice) -> None:
    if device.client is None:
        return
    try:
        await device.client.publish(status_topic(device.ref), STATUS_OFFLINE, qos=1, retain=True)
    except aiomqtt.MqttError as exc:
        log.warning("locker.sim_offline_failed", locker_ref=device.ref, error=str(exc))


def _failure(command: Command, code: ReplyErrorCode, detail: str) -> Reply:
    return Reply(commandId=command.commandId, ok=False, error=ReplyError(code=code, detail=detail))


def _jitter(lat: float, lon: float, rng: random.Random) -> tuple[float, float]:
    """Move a point by less than ``_GPS_JITTER_M`` metres in a random direction."""
    distance = _GPS_JITTER_M * math.sqrt(rng.random())
    bearing = rng.uniform(0, 2 * math.pi)
    dlat = distance * math.cos(bearing) / _M_PER_DEG_LAT
    dlon = distance * math.sin(bearing) / (_M_PER_DEG_LAT * math.cos(math.radians(lat)))
    return lat + dlat, lon + dlon


def evidence_photo(asset_id: str) -> bytes:
    """A small JPEG of coloured shapes, the same for the same asset, different across assets."""
    rng = random.Random(hashlib.sha256(asset_id.encode()).digest())
    width, height = _PHOTO_SIZE
    image = Image.new("RGB", _PHOTO_SIZE, _colour(rng, 30, 120))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = rng.randrange(width - 20), rng.randrange(height - 20)
        box = (x0, y0, x0 + rng.randrange(20, 90), y0 + rng.randrange(20, 70))
        if rng.random() < 0.5:
            draw.ellipse(box, fill=_colour(rng, 120, 255))
        else:
            draw.rectangle(box, fill=_colour(rng, 120, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _reencode(jpeg: bytes) -> bytes:
    """The same picture saved again at another quality: other bytes, same perceptual hash."""
    buffer = io.BytesIO()
    with Image.open(io.BytesIO(jpeg)) as image:
        image.save(buffer, format="JPEG", quality=60)
    return buffer.getvalue()


def _blank_photo() -> bytes:
    """A photo of nothing: one flat grey (a covered lens)."""
    buffer = io.BytesIO()
    Image.new("RGB", _PHOTO_SIZE, (40, 40, 40)).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _colour(rng: random.Random, low: int, high: int) -> tuple[int, int, int]:
    return (rng.randint(low, high), rng.randint(low, high), rng.randint(low, high))


def fleet_specs(
    n: int, prefix: str = "locker-", *, origin: tuple[float, float] = (48.8566, 2.3522)
) -> list[SimulatedLocker]:
    """``n`` lockers ``{prefix}001`` … on a grid 300 m apart, starting at ``origin``."""
    if n < 0:
        raise ValueError(f"number of lockers must be >= 0, got {n}")
    spacing_m = 300.0
    columns = max(1, math.ceil(math.sqrt(n)))
    lat0, lon0 = origin
    m_per_deg_lon = _M_PER_DEG_LAT * math.cos(math.radians(lat0))
    return [
        SimulatedLocker(
            ref=f"{prefix}{i + 1:03d}",
            lat=lat0 + (i // columns) * spacing_m / _M_PER_DEG_LAT,
            lon=lon0 + (i % columns) * spacing_m / m_per_deg_lon,
        )
        for i in range(n)
    ]


async def run_fleet(
    mqtt_url: str,
    specs: list[SimulatedLocker],
    profile: LatencyProfile,
    stop_event: asyncio.Event,
    *,
    seed: int | None = None,
    state_file: Path | None = None,
    faults: FaultBook | None = None,
) -> None:
    """Run a fleet until ``stop_event`` is set, then take it offline.

    With ``state_file``, the fleet's links and command counts are written there as JSON
    whenever they change (checked every 0.2 s) and once more after the fleet stops.
    ``faults``: the fleet's fault book, for a caller that also serves it (HTTP control).
    """
    fleet = LockerFleet(mqtt_url, specs, profile, seed=seed, faults=faults)
    await fleet.start()
    try:
        if state_file is None:
            await stop_event.wait()
        else:
            written: dict[str, Any] | None = None
            while not stop_event.is_set():
                state = fleet.snapshot()
                if state != written:
                    _write_json(state_file, state)
                    written = state
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop_event.wait(), 0.2)
    finally:
        await fleet.stop()
        if state_file is not None:
            _write_json(state_file, fleet.snapshot())


def _write_json(path: Path, data: Any) -> None:
    """Replace ``path`` atomically, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


__all__ = [
    "Decision",
    "LatencyProfile",
    "LockerDevice",
    "LockerFleet",
    "SimulatedLocker",
    "evidence_photo",
    "fleet_specs",
    "run_fleet",
]
