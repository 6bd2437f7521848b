"""The composition root: start what a Core process needs, in order, and stop it in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import operator
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import structlog

from proveniq_core import db
from proveniq_core.config import Settings, mqtt_url_for_messages
from proveniq_core.embedded import EmbeddedBroker, EmbeddedPostgres
from proveniq_core.errors import CoreError
from proveniq_core.ledger import assets, audit, checkpoints, keys
from proveniq_core.locker import shadow
from proveniq_core.locker.gateway import LockerGateway, cancel_and_wait
from proveniq_core.locker.protocol import Reply
from proveniq_core.locker.simulator import LatencyProfile, LockerFleet, fleet_specs
from proveniq_core.observability.gauges import BacklogReader, DatabaseBacklog
from proveniq_core.observability.window import REGISTRATIONS
from proveniq_core.resilience.breaker import BreakerRegistry, State
from proveniq_core.resilience.circuits import LEDGER_CIRCUIT
from proveniq_core.saga import SagaDefinition, SagaEngine
from proveniq_core.saga.registration import InFlight, LinkPolicy, registration_saga
from proveniq_core.saga.retry_queue import RetryPolicy, RetryQueue
from proveniq_core.verify import reviews
from proveniq_core.verify.evidence import EvidenceStore
from proveniq_core.verify.worker import VerifyWorker
from proveniq_core.webhooks import crypto
from proveniq_core.webhooks.delivery import DeliveryWorker

log = structlog.get_logger(__name__)

BOOTSTRAP_TENANT = "default"
BOOTSTRAP_FILE = "bootstrap-key"


@dataclass
class Core:
    """Everything a request handler or worker needs, built once per process."""

    settings: Settings
    conninfo: str
    mqtt_url: str
    pool: db.Pool
    gateway: LockerGateway
    engine: SagaEngine
    registration: SagaDefinition
    retry_queue: RetryQueue
    evidence: EvidenceStore
    read_backlog: BacklogReader
    """What the ``/metrics`` gauges read of the retry queue."""
    fleet: LockerFleet | None = None
    bootstrap: BootstrapKey | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    breakers: BreakerRegistry = field(default_factory=BreakerRegistry)
    """The circuits: ``ledger``, ``locker`` (the broker) and ``locker:<ref>`` per device."""
    key_cache: keys.KeyCache = field(default_factory=keys.KeyCache)
    worker_processes: Callable[[], tuple[int, int]] | None = None
    """With ``serve --workers N``: how many of the worker processes it started are up, of
    how many (``/readyz`` reports it); None in any other process."""

    @property
    def operator_wait(self) -> float:
        """How long an operator's action waits for the saga it runs before answering 202
        (the link budget): past it the saga goes on in the background."""
        return self.settings.link_sync_budget_ms / 1000


@dataclass(frozen=True)
class BootstrapKey:
    """The admin key ``serve`` keeps in ``path``; ``created``: by this start (so shown now)."""

    token: str
    path: Path
    created: bool


async def ensure_bootstrap_key(pool: db.Pool, home: Path) -> BootstrapKey:
    """Reuse the key in ``<home>/bootstrap-key`` if it still works, else create an admin key."""
    path = home / BOOTSTRAP_FILE
    if path.exists():
        token = path.read_text().strip()
        principal = await keys.authenticate(pool, token)
        if principal is not None and principal.scopes >= set(keys.SCOPES):  # new scopes: a new key
            return BootstrapKey(token, path, created=False)
    token = await keys.create_key(
        pool, BOOTSTRAP_TENANT, keys.SCOPES, name="bootstrap admin", actor="system:bootstrap"
    )
    # Written aside then renamed: readable by no one else at any moment, never half-written.
    aside = path.with_name(f".{BOOTSTRAP_FILE}.{os.getpid()}")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(aside, path)
    return BootstrapKey(token, path, created=True)


async def register_fleet(pool: db.Pool, fleet: LockerFleet, tenant_id: str) -> None:
    async with db.transaction(pool) as conn:
        await keys.ensure_tenant(conn, tenant_id)
        for spec in (d.spec for d in fleet.devices):
            existing = await db.fetch_one(
                conn, "get_locker", {"tenant_id": tenant_id, "locker_ref": spec.ref}
            )
            if existing is None:
                await assets.register_locker(
                    conn,
                    tenant_id=tenant_id,
                    locker_ref=spec.ref,
                    lat=spec.lat,
                    lon=spec.lon,
                    geofence_m=100.0,
                    actor="system:embedded",
                )


async def _seal_forever(pool: db.Pool, interval: float = 1.0) -> None:
    while True:
        try:
            await audit.seal(pool)
        except CoreError as exc:
            log.warning("audit_seal_error", error=str(exc))
        await asyncio.sleep(interval)


async def _prune_shadow_forever(pool: db.Pool, interval: float = 3600.0) -> None:
    while True:
        try:
            await shadow.prune(pool)
        except CoreError as exc:
            log.warning("shadow_prune_error", error=str(exc))
        await asyncio.sleep(interval)


def link_policy(settings: Settings) -> LinkPolicy:
    return LinkPolicy(
        sync_budget=settings.link_sync_budget_ms / 1000,
        command_timeout=settings.locker_command_timeout,
        retry=RetryPolicy(
            base=settings.retry_base,
            max_attempts=settings.retry_max_attempts,
            unreachable_limit=settings.retry_unreachable_limit,
        ),
        post_commit_timeout=settings.post_commit_timeout,
    )


def database_backlog(pool: db.Pool) -> BacklogReader:
    """What a scrape reads from the database (retry-queue depth, the backlogs an operator is
    paged on, open ops alerts), straight from the pool: a scrape is not a call through the
    ledger circuit, so observing never opens, probes or closes it."""

    async def read() -> DatabaseBacklog:
        async with pool.connection() as conn:
            depth = await db.fetch_all(conn, "count_open_retry_entries")
            backlog = await db.fetch_one(conn, "scrape_backlog")
            alerts = await db.fetch_all(conn, "count_open_alerts")
        return DatabaseBacklog(
            retry_depth={row["status"]: row["n"] for row in depth},
            backlog=backlog,
            alerts=alerts,
        )

    return read


REWAKE_AFTER = 1.0  # seconds
CORES_HEARD_AFTER = 3.0
"""Seconds after connecting by which the broker has told a process which Core processes live."""


V = TypeVar("V")


class _Serial(Generic[V]):
    """Writes keyed values one batch at a time (``write``, run by ``spawn``): what is added
    while a batch is written waits for the next, one value per key (``merge`` of the old and
    the new; the new by default)."""

    def __init__(
        self,
        write: Callable[[dict[str, V]], Awaitable[None]],
        spawn: Callable[[Awaitable[None]], None],
        merge: Callable[[V, V], V] = lambda old, new: new,
    ) -> None:
        self._write, self._spawn, self._merge = write, spawn, merge
        self._due: dict[str, V] = {}
        self._writing = False

    def add(self, key: str, value: V) -> None:
        self._due[key] = self._merge(self._due[key], value) if key in self._due else value
        if not self._writing:
            self._writing = True
            self._spawn(self._drain())

    async def _drain(self) -> None:
        try:
            while self._due:
                batch, self._due = self._due, {}
                await self._write(batch)
        finally:
            self._writing = False


def _reconcile(
    pool: db.Pool,
    queue: RetryQueue,
    inflight: InFlight,
    gateway: LockerGateway,
    tasks: set[asyncio.Task[Any]],
) -> Callable[[str, Any], None]:
    """A gateway hook that keeps the device shadow (locker/shadow.py) and reconciles the
    ledger with it: a reply no send here waited for is kept if a parked saga waits on it,
    and that saga woken to adopt it; the sagas waiting on a Core process that is gone ask
    again; a locker's presence is recorded, and when it comes (back) online its deferred
    links are retried now."""

    def spawn(work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    # A fleet reporting at once (a broker's restart, the retained reports a process reads as
    # it starts) is woken and recorded one statement at a time, each for every locker that
    # reported meanwhile: a write per report would hold the pool the woken sagas need.

    async def wake_batch(due: dict[str, bool]) -> None:
        # Gone again: its entries wait for the next online or their timer.
        back = [r for r in due if gateway.connected and gateway.presence(r)]
        if not back:
            return
        try:
            await queue.wake_lockers(*back)
        except CoreError as exc:  # the timer retries them anyway
            log.warning("retry_queue.wake_failed", locker_refs=back[:10], error=str(exc))
        if again := [r for r in back if due[r]]:
            spawn(wake_later(again))

    async def record_batch(reported: dict[str, Literal["online", "offline"]]) -> None:
        try:
            await shadow.report_presence(pool, reported)
        except (CoreError, ValueError) as exc:  # ValueError: a ref no topic can hold
            log.warning(
                "shadow.presence_not_recorded", locker_refs=list(reported)[:10], error=str(exc)
            )

    # Lockers whose entries are to be woken, each with whether to wake them once more
    # REWAKE_AFTER later: a link that failed just before the device came back parks its saga
    # a moment later, after the first wake looked (the window is milliseconds).
    waking = _Serial[bool](wake_batch, spawn, merge=operator.or_)
    # Presence to record, each locker's latest.
    recording = _Serial[Literal["online", "offline"]](record_batch, spawn)

    def wake(refs: Iterable[str], again: bool) -> None:
        for ref in refs:
            waking.add(ref, again)

    async def wake_later(refs: list[str]) -> None:
        await asyncio.sleep(REWAKE_AFTER)
        wake(refs, again=False)

    async def adopt(ref: str, reply: Reply, handover: bool) -> None:
        # The ledger may be down for a moment: keep trying about a lease, then the saga's
        # next try sends the command again and the device answers it from its memory.
        for delay in (0.0, 0.5, 2.0, 5.0, 8.0):
            await asyncio.sleep(delay)
            try:
                saga_id = await shadow.report(pool, ref, reply, handover=handover)
            except CoreError as exc:
                log.warning("shadow.reply_not_recorded", locker_ref=ref, error=str(exc))
                continue
            if saga_id is not None:
                log.info("shadow.late_reply", locker_ref=ref, command_id=reply.commandId)
                inflight.wake_when_parked(saga_id)
            return

    async def ask_again(after: float = 0.0) -> None:
        await asyncio.sleep(after)
        try:
            woken = await shadow.ask_again(pool, gateway.live_processes())
        except CoreError as exc:  # their retry timers ask again anyway
            log.warning("shadow.ask_again_failed", error=str(exc))
            return
        if woken:
            log.info("shadow.asking_again", sagas=len(woken))

    def hook(event: str, info: Any) -> None:
        if event == "core_gone":  # its sagas' answers would go to nobody: ask again
            spawn(ask_again())
        elif event == "connected":  # processes that went while none of us listened
            spawn(ask_again(after=CORES_HEARD_AFTER))
        elif event == "online":
            wake([info["lockerRef"]], again=True)
            recording.add(info["lockerRef"], "online")
        elif event == "offline":
            recording.add(info["lockerRef"], "offline")
        elif event == "unmatched_reply":
            spawn(adopt(info["lockerRef"], info["reply"], info.get("handover", False)))

    return hook


def _log_circuit_change(name: str, old: State, new: State) -> None:
    (log.warning if new is State.OPEN else log.info)(
        "circuit_state_changed", circuit=name, old=old.value, new=new.value
    )


@contextlib.asynccontextmanager
async def running(
    settings: Settings,
    *,
    progress: Callable[[str], None] = lambda _: None,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[Core]:
    """Start the embedded parts (when not configured), the pool, the gateway and the workers.

    ``clock`` is the circuit breakers' clock (tests move it instead of sleeping)."""
    settings.home.mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        conninfo = settings.database_url
        if conninfo is None:
            progress(f"starting embedded PostgreSQL in {settings.home / 'pg'}")
            pg = EmbeddedPostgres(settings.home)
            conninfo = await asyncio.to_thread(pg.start)
            stack.callback(pg.stop)
        mqtt_url = settings.mqtt_url
        if mqtt_url is None:
            broker = EmbeddedBroker(settings.home)  # Core and the fleet sign in; no one else
            mqtt_url = await broker.start()
            progress(f"embedded MQTT broker on {mqtt_url_for_messages(mqtt_url)}")
            stack.push_async_callback(broker.stop)

        progress("applying migrations")
        await db.migrate(conninfo)
        pool = await db.open_pool(
            conninfo,
            min_size=settings.pool_min,
            max_size=settings.pool_max,
            timeout=settings.ledger_timeout,
        )
        stack.push_async_callback(pool.close)
        breakers = BreakerRegistry(clock=clock)
        breakers.on_change(_log_circuit_change)
        db.guard(pool, breakers.get(LEDGER_CIRCUIT, db.LEDGER_BREAKER))
        await pool.wait(timeout=10)
        secrets = crypto.box_for(settings)
        await crypto.seal_plaintext_rows(pool, secrets)  # rows from before migration 0011

        gateway = LockerGateway(
            mqtt_url,
            # Unique per process even where every container's pid is 1: the client id is also
            # the process's reply topic.
            client_id=f"proveniq-core-{os.getpid()}-{uuid.uuid4().hex[:8]}",
            keepalive=settings.mqtt_keepalive,
            breakers=breakers,
        )
        await gateway.start()
        stack.push_async_callback(gateway.stop)

        fleet = None
        if settings.mqtt_url is None and settings.sim_lockers > 0:
            fleet = LockerFleet(
                mqtt_url,
                fleet_specs(settings.sim_lockers),
                LatencyProfile.parse(settings.sim_profile),
            )
            await fleet.start()
            stack.push_async_callback(fleet.stop)
            await register_fleet(pool, fleet, BOOTSTRAP_TENANT)
            progress(f"simulated fleet: {len(fleet.devices)} lockers ({settings.sim_profile})")

        hook_tasks: set[asyncio.Task[Any]] = set()
        engine = SagaEngine(
            pool,
            lease=settings.saga_lease,
            compensation_rounds=settings.saga_compensation_rounds,
            compensation_retry_base=settings.saga_compensation_retry_base,
        )
        inflight = InFlight(engine.wake)
        registration = registration_saga(gateway, pool, link_policy(settings), inflight)
        engine.register(registration)
        stack.push_async_callback(engine.close)  # operators' runs still going in background
        retry_queue = RetryQueue(pool, engine)
        gateway.add_event_hook(_reconcile(pool, retry_queue, inflight, gateway, hook_tasks))
        core = Core(
            settings=settings,
            conninfo=conninfo,
            mqtt_url=mqtt_url,
            pool=pool,
            gateway=gateway,
            engine=engine,
            registration=registration,
            retry_queue=retry_queue,
            evidence=EvidenceStore(settings.evidence_dir),
            read_backlog=database_backlog(pool),
            fleet=fleet,
            breakers=breakers,
        )
        core.bootstrap = await ensure_bootstrap_key(pool, settings.home)

        core.tasks.append(asyncio.create_task(engine.keepalive(), name="saga-keepalive"))
        if settings.role in ("api", "all"):  # the last hour's latency, for the console
            core.tasks.append(
                asyncio.create_task(REGISTRATIONS.sample_forever(), name="slo-window")
            )
        if settings.role in ("worker", "all"):
            waker = db.Waker(conninfo)
            worker = VerifyWorker(
                pool,
                gateway,
                core.evidence,
                settings,
                concurrency=settings.verify_concurrency,
                yield_to=engine.backlogged,
            )
            webhook_worker = DeliveryWorker(
                pool,
                timeout=settings.webhook_timeout,
                concurrency=settings.webhook_concurrency,
                poll=settings.poll_interval,
                secrets=secrets,
                allow_private=settings.webhook_allow_private,
                schedule=settings.webhook_retry_schedule,
            )
            stack.push_async_callback(webhook_worker.aclose)  # after the tasks are cancelled
            core.tasks += [
                asyncio.create_task(waker.run(), name="waker"),
                asyncio.create_task(
                    engine.work(
                        waker, concurrency=settings.saga_concurrency, poll=settings.poll_interval
                    ),
                    name="saga-worker",
                ),
                asyncio.create_task(worker.run(waker), name="verify-worker"),
                asyncio.create_task(
                    reviews.run_expiry(pool, settings.poll_interval), name="review-expiry"
                ),
                asyncio.create_task(webhook_worker.run(waker), name="webhook-worker"),
                asyncio.create_task(_seal_forever(pool), name="audit-sealer"),
                asyncio.create_task(_prune_shadow_forever(pool), name="shadow-pruner"),
                asyncio.create_task(checkpoints.run(pool, settings), name="audit-checkpointer"),
            ]

        async def _cancel_tasks() -> None:
            await asyncio.gather(*(cancel_and_wait(task) for task in core.tasks))

        stack.push_async_callback(_cancel_tasks)
        yield core
