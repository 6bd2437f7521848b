"""Core's side of the locker protocol: one MQTT connection, commands out, replies in.

The gateway never raises on a broker outage at start-up: it starts degraded and keeps
reconnecting in the background; ``send`` fails fast with ``LockerUnreachableError``
while it is disconnected.

Circuit breakers (docs/architecture.md §3): every ``send`` passes the fleet-wide circuit ``locker``
(the broker connection) and its device's ``locker:<ref>``, created on first use. The fleet
circuit counts only broker failures (disconnected, publish failed); a device's counts only
its own (no reply in time, offline). A reply of any kind, a fault answer included, counts
against neither. While either is open, ``send`` raises ``LockerUnreachableError`` with
``retry_after`` and publishes nothing. Evidence of health closes a circuit at once: the
broker connection coming back closes ``locker``, a device coming back online its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final, TypeVar
from urllib.parse import unquote, urlsplit

import aiomqtt
import structlog
from opentelemetry.trace import SpanKind

from proveniq_core.errors import (
    BrokerUnreachableError,
    CoreError,
    LockerHardwareError,
    LockerOfflineError,
    LockerTimeoutError,
    LockerUnreachableError,
)
from proveniq_core.locker.protocol import (
    CORE_ROOT,
    STATUS_OFFLINE,
    STATUS_ONLINE,
    TOPIC_ROOT,
    Command,
    CommandType,
    Reply,
    commands_topic,
    core_status_topic,
    decode_reply,
    directed_replies_topic,
    encode,
    ref_from_topic,
    split_reply_topic,
    validate_ref,
)
from proveniq_core.observability import metrics, tracing
from proveniq_core.resilience.backoff import Backoff
from proveniq_core.resilience.breaker import (
    LOCKER,
    BreakerRegistry,
    CircuitOpenError,
    Permit,
    State,
)
from proveniq_core.resilience.circuits import FLEET_CIRCUIT, device_circuit

log = structlog.get_logger(__name__)

EventHook = Callable[[str, dict[str, Any]], None]
"""Receives ``(event, info)``; events: connected, disconnected, command_sent, reply, timeout,
online and offline (a device's presence changed), unmatched_reply (``info["reply"]``: a
reply no send here waits for: late, or another process's), core_gone (``info["process"]``:
another Core process left the broker)."""

# Nagle's algorithm plus delayed ACKs adds ~40 ms per small MQTT write; commands are tiny.
SOCKET_OPTIONS = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)
BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 5.0
RECONNECT = Backoff(BACKOFF_MIN_S, cap=BACKOFF_MAX_S)
"""Waits between broker connection attempts: from 0.2 s, doubling, at most 5 s."""

_ReplyKey = tuple[str, str]  # (locker ref, commandId)
ANSWERED_MEMORY = 4096
"""Command ids whose answer this process took lately: a second copy of one is dropped."""

FLEET_BREAKER: Final = LOCKER.with_filter(lambda exc: isinstance(exc, BrokerUnreachableError))
DEVICE_BREAKER: Final = LOCKER.with_filter(
    lambda exc: isinstance(exc, LockerTimeoutError | LockerOfflineError)
)


_K = TypeVar("_K")
_V = TypeVar("_V")


def parse_mqtt_url(url: str) -> tuple[str, int]:
    """Split ``mqtt://host[:port]`` into host and port (default 1883)."""
    parts = urlsplit(url)
    if parts.scheme != "mqtt" or not parts.hostname:
        raise ValueError(f"expected an MQTT URL like mqtt://host:1883, got {url!r}")
    return parts.hostname, parts.port or 1883


def mqtt_credentials(url: str) -> tuple[str | None, str | None]:
    """Username and password from ``mqtt://user:password@host`` (percent-encoded); None for
    an anonymous broker."""
    parts = urlsplit(url)
    if parts.username is None:
        return None, None
    return unquote(parts.username), unquote(parts.password or "")


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has finished.

    Cancels again while it still runs: on Python 3.11 ``asyncio.wait_for`` (used inside
    aiomqtt) drops a cancellation that races with the result it awaits.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.1)
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("locker.task_failed", task=task.get_name(), error=repr(exc))


def reply_result(
    reply: Reply, context: dict[str, Any] | None = None, asset_id: str | None = None
) -> dict[str, Any]:
    """A reply's ``result``; ``LockerHardwareError`` (``fault`` = its error code) when the
    device refused or failed the command."""
    if reply.error is not None:
        raise LockerHardwareError(
            reply.error.detail or None, fault=reply.error.code, details=context, asset_id=asset_id
        )
    assert reply.result is not None  # guaranteed by Reply's validator
    return reply.result


class LockerGateway:
    """Sends commands to lockers and matches their replies, over one reconnecting client."""

    def __init__(
        self,
        mqtt_url: str,
        *,
        client_id: str | None = None,
        connect_timeout: float = 5.0,
        keepalive: int = 10,
        on_event: EventHook | None = None,
        breakers: BreakerRegistry | None = None,
    ) -> None:
        self._host, self._port = parse_mqtt_url(mqtt_url)
        self._username, self._password = mqtt_credentials(mqtt_url)
        self.breakers = breakers if breakers is not None else BreakerRegistry()
        self._client_id = validate_ref(client_id or f"proveniq-core-{uuid.uuid4().hex[:12]}")
        self._cores: set[str] = set()  # the Core processes online, by client id
        self._answered: dict[str, None] = {}  # insertion-ordered: the oldest is dropped first
        self._connect_timeout = connect_timeout
        # A broker that goes silent (a partition, no FIN) is noticed when its PINGRESP is
        # missing: about 1.5 keepalives. aiomqtt's default of 60 s left Core sending into a
        # dead connection for up to two minutes.
        self._keepalive = keepalive
        self._hooks: list[EventHook] = [on_event] if on_event else []
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._first_attempt = asyncio.Event()
        self._pending: dict[_ReplyKey, set[asyncio.Future[Reply]]] = {}
        self._presence: dict[str, bool] = {}
        self._presence_since: dict[str, datetime] = {}  # when this process saw it change
        self._online_waiters: dict[str, set[asyncio.Future[None]]] = {}

    def add_event_hook(self, hook: EventHook) -> None:
        """Subscribe ``hook`` to gateway events; a hook that raises is logged and skipped."""
        self._hooks.append(hook)

    @property
    def connected(self) -> bool:
        """Whether the broker connection is up right now."""
        return self._client is not None

    def presence(self, ref: str) -> bool | None:
        """Last known presence of ``ref``: online, offline, or ``None`` if unknown."""
        return self._presence.get(ref)

    def presence_since(self, ref: str) -> datetime | None:
        """When this process learned ``ref``'s current presence (offline: last seen)."""
        return self._presence_since.get(ref) if ref in self._presence else None

    async def wait_online(self, ref: str, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``ref`` to be online; return whether it is."""
        if self._presence.get(ref) is True:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._online_waiters.setdefault(ref, set()).add(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            return False
        finally:
            self._discard(self._online_waiters, ref, waiter)
        return True

    async def start(self) -> None:
        """Start the connection loop; wait up to ``connect_timeout`` for the first attempt.

        Never raises for an unreachable broker: the gateway then runs degraded
        (``connected`` is false) and keeps reconnecting.
        """
        if self._task is not None:
            return
        self._first_attempt.clear()
        self._task = asyncio.create_task(self._run(), name=f"locker-gateway:{self._client_id}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._connect_timeout):
                await self._first_attempt.wait()
        if not self.connected:
            log.warning("locker.gateway_degraded", host=self._host, port=self._port)

    async def stop(self) -> None:
        """Disconnect and stop; pending sends fail with ``LockerUnreachableError``."""
        task, self._task = self._task, None
        if task is None:
            return
        client = self._client
        if client is not None:  # gone cleanly: clear the retained presence (no will is sent)
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await client.publish(core_status_topic(self._client_id), b"", retain=True)
        await cancel_and_wait(task)

    async def send(
        self,
        ref: str,
        type: CommandType,
        *,
        command_id: str,
        asset_id: str | None = None,
        timeout: float,
    ) -> dict[str, Any]:
        """Send one command to ``ref`` and return the reply's ``result``.

        Re-sending a ``command_id`` is safe: the device answers it once. Raises
        ``LockerUnreachableError`` at once if the broker is down, the device is known
        offline or a circuit is open, ``LockerTimeoutError`` after ``timeout`` seconds
        without a reply, and ``LockerHardwareError`` (``fault`` = the reply's error code) on
        a failed reply.
        """
        validate_ref(ref)
        context: dict[str, Any] = {"lockerRef": ref, "commandId": command_id, "type": type}
        attributes = {"locker.ref": ref, "locker.command": type, "locker.command_id": command_id}
        with tracing.span(f"locker.command {type}", attributes, kind=SpanKind.CLIENT) as span:
            try:
                with (
                    metrics.timed("locker", type, metrics.locker_status),
                    self._admit(FLEET_CIRCUIT, context, asset_id) as fleet,
                    self._admit(device_circuit(ref), context, asset_id),
                ):
                    return await self._send(
                        ref, type, command_id, asset_id, timeout, context, fleet
                    )
            except CoreError as exc:
                tracing.failed(span, exc.code, str(exc))
                raise

    def _admit(self, circuit: str, context: dict[str, Any], asset_id: str | None) -> Permit:
        config = FLEET_BREAKER if circuit == FLEET_CIRCUIT else DEVICE_BREAKER
        try:
            return self.breakers.get(circuit, config).acquire()
        except CircuitOpenError as exc:
            raise LockerUnreachableError(
                str(exc),
                details={**context, "circuit": circuit},
                asset_id=asset_id,
                retry_after=exc.retry_after,
            ) from None

    async def _send(
        self,
        ref: str,
        type: CommandType,
        command_id: str,
        asset_id: str | None,
        timeout: float,
        context: dict[str, Any],
        fleet: Permit,
    ) -> dict[str, Any]:
        client = self._client
        if client is None:
            raise BrokerUnreachableError(
                "MQTT broker unreachable", details=context, asset_id=asset_id
            )
        if self._presence.get(ref) is False:
            raise LockerOfflineError("locker offline", details=context, asset_id=asset_id)
        command = Command(
            commandId=command_id,
            type=type,
            assetId=asset_id,
            issuedAt=datetime.now(UTC),
            traceparent=tracing.traceparent(),
            replyTo=directed_replies_topic(ref, self._client_id),
        )
        key = (ref, command_id)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(key, set()).add(future)
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                await client.publish(commands_topic(ref), encode(command), qos=1)
                fleet.record_success()  # the broker took it; the rest is up to the device
                self._emit("command_sent", context)
                reply = await future
        except TimeoutError:
            self._emit("timeout", {**context, "timeoutS": timeout})
            raise LockerTimeoutError(
                f"no reply from {ref} within {timeout:g} s", details=context, asset_id=asset_id
            ) from None
        except aiomqtt.MqttError as exc:
            raise BrokerUnreachableError(
                f"could not publish to {ref}: {exc}", details=context, asset_id=asset_id
            ) from exc
        except LockerUnreachableError as exc:  # set by the loop: broker lost or device gone
            raise exc.__class__(exc.message, details=context, asset_id=asset_id) from None
        finally:
            self._discard(self._pending, key, future)
        latency_ms = (time.monotonic() - started) * 1000
        self._emit("reply", {**context, "ok": reply.ok, "latencyMs": round(latency_ms, 1)})
        return reply_result(reply, context, asset_id)

    async def _run(self) -> None:
        failures = 0  # connection attempts failed since the last success
        while True:
            client = aiomqtt.Client(
                self._host,
                self._port,
                identifier=self._client_id,
                timeout=self._connect_timeout,
                keepalive=self._keepalive,
                socket_options=SOCKET_OPTIONS,
                username=self._username,
                password=self._password,
                # A process that dies leaves no retained "online": the broker clears it.
                will=aiomqtt.Will(core_status_topic(self._client_id), b"", qos=1, retain=True),
            )
            try:
                async with client:
                    for topic in self._subscriptions():
                        await client.subscribe(topic, qos=1)
                    await client.publish(
                        core_status_topic(self._client_id), STATUS_ONLINE, qos=1, retain=True
                    )
                    self._on_connected(client)
                    failures = 0
                    async for message in client.messages:
                        self._dispatch(message.topic.value, message.payload)
            except aiomqtt.MqttError as exc:
                backoff = RECONNECT.delay(failures)
                log.warning("locker.broker_error", error=str(exc), retry_in_s=backoff)
            except Exception:
                backoff = RECONNECT.delay(failures)
                log.exception("locker.gateway_loop_failed", retry_in_s=backoff)
            finally:
                self._on_disconnected()
            await asyncio.sleep(RECONNECT.delay(failures))
            failures += 1

    def _subscriptions(self) -> list[str]:
        """Replies meant for this process (``replyTo``) and those on ``.../replies`` (from
        devices that ignore ``replyTo``: every process gets them); the presence of the
        lockers and of Core's processes."""
        return [
            f"{TOPIC_ROOT}/+/replies/{self._client_id}",
            f"{TOPIC_ROOT}/+/replies",
            f"{TOPIC_ROOT}/+/status",
            f"{CORE_ROOT}/+/status",
        ]

    @property
    def process_id(self) -> str:
        """This process's name on the broker: its client id, and its ``replyTo``'s last level."""
        return self._client_id

    def live_processes(self) -> set[str]:
        """The Core processes online on the broker, as this one last heard (itself included)."""
        return self._cores | {self._client_id}

    def _on_connected(self, client: aiomqtt.Client) -> None:
        self._client = client
        self._first_attempt.set()
        log.info("locker.broker_connected", host=self._host, port=self._port)
        self._close_circuit(FLEET_CIRCUIT)
        self._emit("connected", {"host": self._host, "port": self._port})

    def _on_disconnected(self) -> None:
        self._first_attempt.set()
        if self._client is None:
            return
        self._client = None
        # Presence learnt on this connection is stale; the broker resends it on reconnect.
        self._presence.clear()
        failed = self._fail_pending(None, "MQTT connection lost")
        log.warning("locker.broker_disconnected", failed_requests=failed)
        self._emit("disconnected", {"failedRequests": failed})

    def _fail_pending(self, ref: str | None, reason: str) -> int:
        """Fail the sends waiting on ``ref`` (offline) or on all (``None``: broker lost)."""
        error = BrokerUnreachableError if ref is None else LockerOfflineError
        failed = 0
        for (key_ref, _), futures in self._pending.items():
            if ref is None or key_ref == ref:
                for future in futures:
                    if not future.done():
                        future.set_exception(error(reason))
                        failed += 1
        return failed

    def _close_circuit(self, circuit: str) -> None:
        """Close ``circuit`` if it is not closed: what it waited for has come back."""
        if circuit in self.breakers and self.breakers[circuit].state is not State.CLOSED:
            log.info("locker.circuit_closed_on_recovery", circuit=circuit)
            self.breakers[circuit].reset()

    def _dispatch(self, topic: str, payload: Any) -> None:
        # Filter by topic even though we only subscribe to replies and status: amqtt
        # 0.12 also pushes retained messages matching other clients' subscriptions.
        try:
            if topic.startswith(f"{CORE_ROOT}/"):
                self._on_core_status(topic, payload)
            elif topic.endswith("/status"):
                self._on_status(ref_from_topic(topic), payload)
            elif "/replies" in topic:
                self._on_reply(*split_reply_topic(topic), payload)
        except ValueError as exc:
            log.warning("locker.malformed_message", topic=topic, error=str(exc))
        except Exception:
            log.exception("locker.dispatch_failed", topic=topic)

    def _on_status(self, ref: str, payload: Any) -> None:
        if payload in (b"", None):  # retained status cleared
            self._presence.pop(ref, None)
            return
        if payload in (STATUS_ONLINE, STATUS_OFFLINE) and self._presence.get(ref) != (
            payload == STATUS_ONLINE
        ):
            self._presence_since[ref] = datetime.now(UTC)
        if payload == STATUS_ONLINE:
            was = self._presence.get(ref)
            self._presence[ref] = True
            if was is False:
                self._close_circuit(device_circuit(ref))
            if was is not True:
                self._emit("online", {"lockerRef": ref})
            for waiter in self._online_waiters.get(ref, ()):
                if not waiter.done():
                    waiter.set_result(None)
        elif payload == STATUS_OFFLINE:
            if self._presence.get(ref) is not False:
                self._emit("offline", {"lockerRef": ref})
            self._presence[ref] = False
            # A clean-session device that went away will never answer what it was sent.
            if failed := self._fail_pending(ref, "locker went offline"):
                log.warning("locker.offline_with_pending", locker_ref=ref, failed_requests=failed)
        else:
            raise ValueError(f"unknown status payload {payload!r}")

    def _on_core_status(self, topic: str, payload: Any) -> None:
        parts = topic.split("/")
        if len(parts) != 4 or parts[3] != "status":
            raise ValueError(f"not a Core status topic: {topic!r}")
        process = validate_ref(parts[2])
        if payload == STATUS_ONLINE:
            self._cores.add(process)
        elif process in self._cores:  # cleared: stopped, or gone and cleared by its will
            self._cores.discard(process)
            self._emit("core_gone", {"process": process})

    def _on_reply(self, ref: str, target: str | None, payload: Any) -> None:
        """Take a reply. ``target``: the process it was meant for (``replyTo``), None for
        one on ``.../replies``."""
        if target is not None and target != self._client_id:
            return  # not subscribed to: a broker quirk (amqtt pushes retained mismatches)
        if not isinstance(payload, bytes | str):
            raise ValueError(f"unexpected payload type {type(payload).__name__}")
        reply = decode_reply(payload)
        futures = self._pending.get((ref, reply.commandId))
        if futures:
            for future in futures:
                if not future.done():
                    future.set_result(reply)
            self._remember(reply.commandId)
            return
        if reply.commandId in self._answered:
            return  # a second copy of an answer this process took already
        self._remember(reply.commandId)
        # Meant for this process but late (its send timed out, perhaps while its saga is
        # still writing the park): the shadow keeps it and the saga waiting or parking on it
        # adopts it. An answer on .../replies reaches every process, the one that asked
        # included: kept only if a parked saga waits on it.
        log.debug("locker.reply_unmatched", locker_ref=ref, command_id=reply.commandId)
        handover = target is not None
        self._emit("unmatched_reply", {"lockerRef": ref, "reply": reply, "handover": handover})

    def _remember(self, command_id: str) -> None:
        self._answered[command_id] = None
        if len(self._answered) > ANSWERED_MEMORY:
            del self._answered[next(iter(self._answered))]

    def _emit(self, event: str, info: dict[str, Any]) -> None:
        for hook in self._hooks:
            try:
                hook(event, info)
            except Exception:
                log.exception("locker.event_hook_failed", gateway_event=event)

    @staticmethod
    def _discard(table: dict[_K, set[_V]], key: _K, item: _V) -> None:
        entries = table.get(key)
        if entries is not None:
            entries.discard(item)
            if not entries:
                del table[key]


__all__ = [
    "BACKOFF_MAX_S",
    "BACKOFF_MIN_S",
    "DEVICE_BREAKER",
    "FLEET_BREAKER",
    "EventHook",
    "LockerGateway",
    "mqtt_credentials",
    "parse_mqtt_url",
    "reply_result",
]
