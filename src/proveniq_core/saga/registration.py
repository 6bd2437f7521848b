"""The asset registration saga (docs/architecture.md §2, §3): ledger record, locker link, status,
verification — and what each failure of the link does.

The link waits ``sync_budget`` seconds in the request. Past that, or when the device is
unreachable or in maintenance, the saga parks (the partial commit: asset ``pending_link``
and a retry-queue entry, in one transaction) and the request answers 202; the command
stays in flight up to ``command_timeout`` and a late answer wakes the saga, which takes
that answer without sending anything new. A hardware fault parks the saga for an operator
(asset ``link_failed``, critical alert, 502).

``register`` runs it for a request and returns a typed ``Registration``: linked, deferred,
held for an operator, or failed, with what the answer needs. The saga tells the engine what
"in doubt" means for a locker command and which ids its logs and alerts carry.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import psycopg
import structlog

from proveniq_core import db
from proveniq_core.errors import (
    CoreError,
    LockerHardwareError,
    LockerTimeoutError,
    LockerUnreachableError,
    PartialCommitError,
    PostCommitTimeoutError,
)
from proveniq_core.ledger import alerts, assets
from proveniq_core.locker import shadow
from proveniq_core.locker.gateway import LockerGateway, reply_result
from proveniq_core.observability import timing
from proveniq_core.saga.engine import SagaEngine
from proveniq_core.saga.model import (
    HOLD,
    TIMEOUT,
    Defer,
    LeaseLostError,
    SagaDefinition,
    SagaResult,
    SagaStatus,
    Step,
    StepContext,
    StepError,
)
from proveniq_core.saga.retry_queue import (
    Deferred,
    RetryPolicy,
    close_entries,
    exhaust_entries,
    park_link,
)

log = structlog.get_logger(__name__)

NAME = "asset_registration"
_COMMANDS = uuid.UUID("6f1c7a52-1d55-4c1e-9b0e-3d2f4a6b8c90")


# A locker command that stopped with one of these may have been carried out: it got no
# answer in time, or the device was not reachable to answer (the command may have gone out
# first). A fault is the device's answer: it did nothing.
_IN_DOUBT = frozenset({TIMEOUT, LockerTimeoutError.code, LockerUnreachableError.code})


def in_doubt(error: StepError) -> bool:
    """Whether the locker link that stopped with ``error`` may have taken effect."""
    return error.code in _IN_DOUBT


def log_context(data: Mapping[str, Any]) -> dict[str, Any]:
    """The ids a registration's log lines carry: its asset, locker and (resumed outside its
    request) the request that started it."""
    context = {
        key: data[data_key]
        for key, data_key in (("asset_id", "assetId"), ("locker_ref", "lockerRef"))
        if data.get(data_key) is not None
    }
    if data.get("requestId"):
        context["request_id"] = data["requestId"]
    return context


def alert_subject(data: Mapping[str, Any]) -> dict[str, Any]:
    """The ids an alert about a registration names."""
    return {"assetId": data.get("assetId"), "lockerRef": data.get("lockerRef")}


def command_id(ctx: StepContext, suffix: str = "") -> str:
    """A locker commandId stable across re-executions of the same step."""
    return str(uuid.uuid5(_COMMANDS, ctx.idempotency_key + suffix))


@dataclass(frozen=True, slots=True)
class LinkPolicy:
    """How long a request waits for the locker, how long a command may take, how deferred
    links are retried, and how long the verification insert may wait on locks."""

    sync_budget: float = 2.0
    command_timeout: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    post_commit_timeout: float = 2.0


class InFlight:
    """Locker commands still running in this process, by commandId.

    A step that runs again joins its command rather than sending it anew, and a command
    that outlived its request wakes its parked saga when it succeeds.
    """

    def __init__(self, wake: Callable[[str], Awaitable[bool]], *, patience: float = 15.0) -> None:
        """``wake(saga_id)`` makes a parked saga due, False when it is not parked; a late
        answer keeps trying it for ``patience`` seconds (about a saga lease: a park that
        takes longer than that lost its lease, and the saga's next owner sends the command
        again and gets the device's first answer)."""
        self._wake = wake
        self._patience = patience
        self._tasks: dict[str, asyncio.Task[dict[str, Any]]] = {}
        self._wakers: set[asyncio.Task[Any]] = set()

    def start(
        self, command: str, send: Callable[[], Awaitable[dict[str, Any]]], keep: float
    ) -> asyncio.Task[dict[str, Any]]:
        """The running (or successfully finished) task of ``command``, else a new one,
        remembered for ``keep`` seconds."""
        task = self._tasks.get(command)
        if task is not None and not (task.done() and task.exception() is not None):
            return task
        task = asyncio.ensure_future(send())
        self._tasks[command] = task
        asyncio.get_running_loop().call_later(keep, self._forget, command, task)
        return task

    def wake_on_success(self, command: str, saga_id: str) -> None:
        task = self._tasks.get(command)
        if task is None:
            return

        def done(t: asyncio.Task[dict[str, Any]]) -> None:
            if not t.cancelled() and t.exception() is None:
                self.wake_when_parked(saga_id)

        task.add_done_callback(done)

    def wake_when_parked(self, saga_id: str) -> None:
        """Wake ``saga_id`` as soon as it is parked (within ``patience``), in the background."""
        waker = asyncio.ensure_future(self._wake_parked(saga_id))
        self._wakers.add(waker)
        waker.add_done_callback(self._wakers.discard)

    async def _wake_parked(self, saga_id: str) -> None:
        """Wake the saga once it is parked. An answer can come while the commit that parks
        the saga is still under way (the saga is held: the wake is refused) or while the
        database is down; either way try again, backing off, rather than leave the asset
        ``pending_link`` until the retry timer (minutes) while the device holds it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._patience
        delay = 0.05
        while True:
            try:
                if await self._wake(saga_id):
                    return
            except CoreError:  # the ledger is down or its circuit open: try again
                pass
            if loop.time() + delay > deadline:  # never parked again, or finished otherwise
                log.info("saga.late_answer_wake_given_up", saga_id=saga_id)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def forget(self, command: str) -> None:
        self._tasks.pop(command, None)

    def _forget(self, command: str, task: asyncio.Task[dict[str, Any]]) -> None:
        if self._tasks.get(command) is task:
            del self._tasks[command]
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: no "never retrieved" warning


def registration_saga(
    gateway: LockerGateway, pool: db.Pool, policy: LinkPolicy, inflight: InFlight
) -> SagaDefinition:
    """Build the saga for one process: its gateway, pool and in-flight commands."""

    def audit_ctx(ctx: StepContext) -> dict[str, Any]:
        return {
            "actor": ctx.data["actor"],
            "request_id": ctx.data.get("requestId"),
            "saga_id": ctx.saga_id,
        }

    def deferred(ctx: StepContext) -> Deferred:
        d = ctx.data
        return Deferred(
            d["assetId"], d["tenantId"], d["lockerRef"], ctx.saga_id, d["actor"], d.get("requestId")
        )

    async def create_record(ctx: StepContext) -> dict[str, Any]:
        d = ctx.data
        await assets.create(
            ctx.tx,
            asset_id=d["assetId"],
            tenant_id=d["tenantId"],
            name=d["name"],
            category=d["category"],
            locker_ref=d["lockerRef"],
            saga_id=ctx.saga_id,
            actor=d["actor"],
            request_id=d.get("requestId"),
        )
        return {}

    async def void_record(ctx: StepContext) -> None:
        await close_entries(ctx.tx, ctx.data["assetId"], "discarded")
        await assets.transition(ctx.tx, ctx.data["assetId"], "compensated", **audit_ctx(ctx))

    def park(
        ctx: StepContext,
        cause: CoreError,
        until: datetime | None = None,
        *,
        command: str | None = None,
    ) -> Defer:
        """Park the link; with ``command`` (it may still be answered) the shadow records
        that the saga waits on it, and an answer recorded already makes the saga due now."""

        async def write(conn: db.Conn) -> float:
            delay = await park_link(conn, deferred(ctx), cause, policy.retry, until=until)
            if command is None:
                return delay
            d = ctx.data
            answered = await shadow.ask(
                conn,
                command,
                d["lockerRef"],
                "link",
                asset_id=d["assetId"],
                saga_id=ctx.saga_id,
                asked_by=gateway.process_id,
            )
            return 0.0 if answered is not None else delay

        return Defer(cause=cause, write=write)

    def hold_for_operator(ctx: StepContext, fault: LockerHardwareError) -> Defer:
        link = deferred(ctx)

        async def write(conn: db.Conn) -> float:
            await assets.transition(
                conn, link.asset_id, "link_failed", reason=fault.fault, **audit_ctx(ctx)
            )
            await exhaust_entries(conn, link, {"code": fault.code, "fault": fault.fault})
            await alerts.raise_alert(
                conn,
                code=fault.code,
                severity="critical",
                message=(
                    f"locker {link.locker_ref} reported {fault.fault} linking asset "
                    f"{link.asset_id}; an operator must retry or cancel it"
                ),
                dedup_key=f"asset:{link.asset_id}:link_failed",
                tenant_id=link.tenant_id,
                subject={"assetId": link.asset_id, "lockerRef": link.locker_ref},
            )
            return HOLD

        return Defer(cause=fault, write=write)

    async def link(ctx: StepContext) -> dict[str, Any]:
        d = ctx.data
        ref, asset_id = d["lockerRef"], d["assetId"]
        generation = d.get("linkGeneration", 0)
        command = command_id(ctx, f":{generation}" if generation else "")
        in_request = ctx.attempt == 1  # later attempts run in a worker or for an operator
        answered, until = None, None
        if in_request and "maintenanceUntil" in d:  # read with the locker as the saga began
            until = d["maintenanceUntil"]
            until = until if until is not None and until > datetime.now(UTC) else None
        else:
            async with db.connection(pool) as conn:
                if in_request:
                    row = await db.fetch_one(conn, "locker_maintenance", {"locker_ref": ref})
                    until = row["maintenance_until"] if row is not None else None
                else:
                    until, answered = await shadow.start_retry(conn, asset_id, ref, command)
        if answered is not None:  # the device answered after we stopped waiting: adopt it
            inflight.forget(command)
            try:
                result = reply_result(answered, {"lockerRef": ref, "commandId": command}, asset_id)
            except LockerHardwareError as exc:
                raise hold_for_operator(ctx, exc) from None
            log.info("saga.link_answer_adopted", command_id=command)
            return {"lockerId": str(result["lockerId"])}
        if until is not None:
            busy = LockerUnreachableError(f"locker {ref} is in maintenance until {until}")
            raise park(ctx, busy, until)

        async def send() -> dict[str, Any]:
            return await gateway.send(
                ref, "link", command_id=command, asset_id=asset_id, timeout=policy.command_timeout
            )

        task = inflight.start(command, send, keep=policy.command_timeout * 2)
        budget = policy.sync_budget if in_request else None
        try:
            with timing.waiting("locker"):
                async with asyncio.timeout(budget):
                    result = await asyncio.shield(task)
        except TimeoutError:  # the budget is spent, the command is still in flight
            inflight.wake_on_success(command, ctx.saga_id)
            cause = LockerTimeoutError(
                f"no reply from {ref} within the {budget:g} s budget; the command stays in flight",
                asset_id=asset_id,
            )
            raise park(ctx, cause, command=command) from None
        except (LockerTimeoutError, LockerUnreachableError) as exc:
            raise park(ctx, exc, command=command) from None
        except LockerHardwareError as exc:
            raise hold_for_operator(ctx, exc) from None
        inflight.forget(command)
        return {"lockerId": str(result["lockerId"])}

    async def unlink(ctx: StepContext) -> None:
        await gateway.send(
            ctx.data["lockerRef"],
            "unlink",
            command_id=command_id(ctx, ":unlink"),
            asset_id=ctx.data["assetId"],
            timeout=policy.command_timeout,
        )

    async def mark_linked(ctx: StepContext) -> dict[str, Any]:
        await assets.transition(
            ctx.tx, ctx.data["assetId"], "linked", locker_id=ctx.data["lockerId"], **audit_ctx(ctx)
        )
        await close_entries(ctx.tx, ctx.data["assetId"], "resolved")
        return {}

    async def mark_pending(ctx: StepContext) -> None:
        await assets.transition(ctx.tx, ctx.data["assetId"], "pending", **audit_ctx(ctx))

    async def queue_verification(ctx: StepContext) -> dict[str, Any]:
        ms = int(policy.post_commit_timeout * 1000)
        # The wait for the table's lock is bounded for the rest of this transaction (a
        # table lock is taken as a statement is planned, so it cannot be set in the insert).
        # The sync reads the insert's answer here, where a lock timeout can become a deferral;
        # the transaction is then rolled back and the deferral written in a new one.
        await ctx.tx.execute("SELECT set_config('lock_timeout', %s, true)", (f"{ms}ms",))
        try:
            await db.execute(
                ctx.tx,
                "insert_verification",
                {
                    "id": ctx.data["verificationId"],
                    "asset_id": ctx.data["assetId"],
                    "tenant_id": ctx.data["tenantId"],
                },
            )
            await db.sync(ctx.tx)
        except psycopg.errors.LockNotAvailable:
            # Linked and committed already: answer now, queue it on the saga's timer.
            raise Defer(1.0, cause=PostCommitTimeoutError("verification queued late")) from None
        return {}

    async def cancel_verification(ctx: StepContext) -> None:
        await db.execute(ctx.tx, "cancel_verification", {"asset_id": ctx.data["assetId"]})

    link_timeout = policy.command_timeout + 5.0
    return SagaDefinition(
        NAME,
        (
            Step(
                "create_ledger_record",
                create_record,
                void_record,
                timeout=5.0,
                retries=3,
                transactional=True,
            ),
            Step("link_locker", link, unlink, timeout=link_timeout, retries=0),
            Step(
                "update_status",
                mark_linked,
                mark_pending,
                timeout=5.0,
                retries=3,
                transactional=True,
            ),
            Step(
                "queue_verification",
                queue_verification,
                cancel_verification,
                timeout=5.0 + policy.post_commit_timeout,
                retries=3,
                transactional=True,
            ),
        ),
        in_doubt=in_doubt,
        log_context=log_context,
        alert_subject=alert_subject,
    )


class Outcome(StrEnum):
    """How a registration request ends."""

    LINKED = "linked"
    """Linked (verification perhaps queued late: a warning): 201."""
    DEFERRED = "deferred"
    """The link waits in the retry queue, the asset ``pending_link``: 202."""
    HELD = "held"
    """The device refused; the asset is ``link_failed`` until an operator acts: 502."""
    FAILED = "failed"
    """Undone, or being undone: the error's own answer."""
    TAKEN_OVER = "taken_over"
    """This process lost the saga's lease mid-request (it was starved) and another claimed
    it, and finishes it: 202 with the asset's id, so the client can follow it."""


@dataclass(frozen=True, slots=True)
class Registration:
    """Where a registration ended and what its answer needs. ``warning``: linked, but a later
    step completes asynchronously; ``retry_at`` and ``reason``: deferred (no ``retry_at``
    when held until woken); ``error``: held or failed, the error to answer with."""

    outcome: Outcome
    asset_id: str
    verification_id: str
    locker_id: str | None = None
    warning: CoreError | None = None
    retry_at: datetime | None = None
    reason: str | None = None
    error: CoreError | None = None


async def _locker_of_tenant(conn: db.Conn, data: dict[str, Any]) -> None:
    """The registration's locker is its tenant's; its maintenance window, for the link."""
    locker = await assets.get_locker(conn, data["tenantId"], data["lockerRef"])
    data["maintenanceUntil"] = locker.maintenance_until


async def register(
    engine: SagaEngine,
    saga: SagaDefinition,
    *,
    tenant_id: str,
    name: str,
    category: str,
    locker_ref: str,
    actor: str,
    request_id: str | None,
) -> Registration:
    """Register an asset: run its saga here, as far as it goes within the request.

    The locker must be the tenant's (``LedgerConstraintError`` with nothing written): the
    saga's first transaction reads it, with its maintenance window for the link's first
    attempt."""
    asset_id, verification_id = str(uuid.uuid4()), str(uuid.uuid4())
    try:
        result = await engine.run(
            saga,
            {
                "assetId": asset_id,
                "verificationId": verification_id,
                "tenantId": tenant_id,
                "name": name,
                "category": category,
                "lockerRef": locker_ref,
                "actor": actor,
                "requestId": request_id,
            },
            tenant_id=tenant_id,
            precondition=_locker_of_tenant,
        )
    except LeaseLostError as exc:
        # A saga is claimable only once its first commit (with the asset record) is in.
        log.warning("registration_taken_over", asset_id=asset_id, error=str(exc))
        return Registration(
            Outcome.TAKEN_OVER, asset_id, verification_id, reason=exc.code, error=exc
        )
    return outcome(result, asset_id, verification_id)


def outcome(result: SagaResult, asset_id: str, verification_id: str) -> Registration:
    """What the run of a registration saga means for the request that started it."""
    cause = result.deferral.cause if result.deferral else None
    if result.ok or isinstance(cause, PostCommitTimeoutError):
        locker_id = result.data.get("lockerId")
        return Registration(
            Outcome.LINKED, asset_id, verification_id, locker_id=locker_id, warning=cause
        )
    if isinstance(cause, LockerHardwareError):
        cause.asset_id = asset_id
        return Registration(Outcome.HELD, asset_id, verification_id, error=cause)
    if cause is not None:  # timeout, unreachable, maintenance: the partial commit is done
        delay = result.deferred
        retry_at = (
            None
            if delay is None or math.isinf(delay)
            else datetime.now(UTC) + timedelta(seconds=delay)
        )
        return Registration(
            Outcome.DEFERRED, asset_id, verification_id, retry_at=retry_at, reason=cause.code
        )
    exc = result.error
    error: CoreError
    if result.status in (SagaStatus.COMPENSATING, SagaStatus.COMPENSATION_FAILED):
        # Steps committed and could not (yet) be undone: the saga retries and alerts.
        error = PartialCommitError(
            f"registration failed at {result.failed_step} and is being undone",
            asset_id=asset_id,
        )
    elif isinstance(exc, CoreError):
        exc.asset_id = asset_id if result.status == SagaStatus.COMPENSATED else None
        error = exc
    else:
        error = CoreError(f"registration failed at {result.failed_step}", asset_id=asset_id)
    if error is not exc:
        error.__cause__ = exc
    return Registration(Outcome.FAILED, asset_id, verification_id, error=error)
