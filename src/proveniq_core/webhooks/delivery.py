"""The delivery worker: claim due deliveries, POST them signed, log each attempt, retry.

Any number of workers (in any number of processes) share the work: a delivery is claimed
with ``FOR UPDATE SKIP LOCKED`` under a lease, so a worker that dies mid-attempt only delays
it until the lease runs out.

The retry schedule (Standard Webhooks' recommendation): the first attempt at once, then
retries 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h after the previous failure: 8 attempts
over about 27.6 h. Each delay is lengthened by up to 20 % random jitter (never shortened,
so the schedule always spans more than 24 h). A 429 or 503 answer with ``Retry-After``
(seconds or an HTTP date) waits at least that long, up to 24 h. A lab that cannot wait a
day replaces the schedule with ``PROVENIQ_WEBHOOK_RETRY_SCHEDULE`` (its length + 1
attempts; ``docs/operations.md``); the default is ``SCHEDULE``.

Outcomes: a 2xx answer delivers; 410 Gone fails the delivery and disables the endpoint; any
other answer, a timeout or a connection error retries; a failure of the last attempt fails
the delivery, disables the endpoint and raises an ops alert (and so ``ops.alert``).

Each attempt first resolves the URL's host and checks every address (``destinations``): a
refused destination is a failed attempt that connects nowhere, and otherwise the POST goes
to the checked address. The log keeps what the tenant may see of an attempt: the status
code, the timing and the class of error, never what the receiver answered.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

import httpx
import structlog
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind

from proveniq_core import db
from proveniq_core.observability import metrics, tracing
from proveniq_core.resilience.backoff import stretch
from proveniq_core.webhooks import destinations, endpoints, signing
from proveniq_core.webhooks.crypto import SecretBox, SecretKeyError

log = structlog.get_logger(__name__)

SCHEDULE: Final = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
"""Seconds before each retry: ``SCHEDULE[n - 1]`` after failed attempt ``n``."""
MAX_ATTEMPTS: Final = len(SCHEDULE) + 1
JITTER: Final = 0.2
MAX_RETRY_AFTER: Final = 86400.0
USER_AGENT: Final = "proveniq-core-webhooks/1"
CLAIM_LINGER_S: Final = 0.05
"""After a wake, the worker waits this long before it claims: deliveries of events committed
together (an asset's several events, many assets' at once) are claimed in one commit."""
_SEND_ERRORS: Final = (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, OSError, ValueError)


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one POST got: an HTTP status, or an error without one."""

    attempted_at: datetime
    duration_ms: float
    status_code: int | None
    error: str | None
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(frozen=True, slots=True)
class Outcome:
    status: Literal["delivered", "pending", "failed"]
    delay: float | None = None
    """pending: seconds until the next attempt."""
    disable: str | None = None
    """Why the endpoint is disabled, if it is."""
    exhausted: bool = False


def decide(
    attempt: int,
    result: Attempt,
    rand: Callable[[], float] = random.random,
    schedule: Sequence[float] = SCHEDULE,
) -> Outcome:
    """What follows attempt number ``attempt`` (1-based) of a delivery that got ``result``,
    retried on ``schedule`` (``len(schedule) + 1`` attempts in all)."""
    if result.ok:
        return Outcome("delivered")
    if result.status_code == 410:
        return Outcome("failed", disable="the receiver answered 410 Gone")
    if attempt > len(schedule):
        return Outcome(
            "failed",
            disable=f"{attempt} attempts failed over {_span(schedule)} (last: {result.error})",
            exhausted=True,
        )
    delay = stretch(schedule[attempt - 1], JITTER, rand)
    if result.status_code in (429, 503) and result.retry_after is not None:
        delay = max(delay, min(result.retry_after, MAX_RETRY_AFTER))
    return Outcome("pending", delay)


def _span(schedule: Sequence[float]) -> str:
    """How long a schedule retries, in words: "more than 24 h" for the default."""
    total = sum(schedule)
    if total >= 86400:
        return "more than 24 h"
    return f"more than {total / 3600:.1f} h" if total >= 3600 else f"more than {total:g} s"


class DeliveryWorker:
    def __init__(
        self,
        pool: db.Pool,
        *,
        timeout: float = 10.0,
        concurrency: int = 16,
        poll: float = 1.0,
        rand: Callable[[], float] = random.random,
        secrets: SecretBox,
        allow_private: bool = False,
        resolver: destinations.Resolver | None = None,
        schedule: Sequence[float] = SCHEDULE,
    ) -> None:
        self.pool = pool
        self.schedule = tuple(schedule)
        self.timeout = timeout
        self.poll = poll
        self.rand = rand
        self.secrets = secrets
        self.allow_private = allow_private
        self.resolver = resolver
        # No proxies from the environment (they would resolve the name themselves), and no
        # kept-alive connections: the pool is keyed by address, so a connection verified for
        # one host name must not carry a request for another name on the same address.
        self.http = httpx.AsyncClient(
            timeout=timeout,
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
            headers={"user-agent": USER_AGENT},
        )
        self.concurrency = concurrency

    async def aclose(self) -> None:
        await self.http.aclose()

    async def claim(self, limit: int) -> list[db.Row]:
        """Up to ``limit`` due deliveries, claimed under a lease in one commit."""
        # The lease outlasts the longest attempt, so a live worker never loses it.
        params = {"lease": self.timeout * 2 + 30, "limit": limit}
        async with db.connection(self.pool) as conn:
            return await db.fetch_all(conn, "claim_webhook_deliveries", params)

    async def _claimed(self, limit: int) -> AsyncIterator[db.Row]:
        for job in await self.claim(limit):
            yield job

    async def _deliver(self, job: db.Row) -> None:
        parent = await self._trace(job) if tracing.enabled() else None
        attributes = {
            "webhook.delivery_id": str(job["id"]),
            "webhook.event_type": job["type"],
            "webhook.attempt": job["attempts"],
        }
        with tracing.span(
            "webhook.deliver", attributes, parent=parent, kind=SpanKind.CLIENT
        ) as span:
            await self._attempt(job, span)

    async def _trace(self, job: db.Row) -> Context | None:
        """The trace of the registration whose asset the event is about, if it is about one."""
        asset_id = job["data"].get("assetId") if isinstance(job["data"], dict) else None
        try:
            asset_id = uuid.UUID(str(asset_id)) if asset_id else None
        except ValueError:  # not an asset of ours: the delivery starts its own trace
            asset_id = None
        if asset_id is None:
            return None
        async with db.connection(self.pool) as conn:
            row = await db.fetch_one(conn, "asset_trace", {"asset_id": asset_id})
        return tracing.context_of(row["traceparent"] if row else None)

    async def _attempt(self, job: db.Row, span: Span) -> None:
        body = json.dumps(
            signing.payload(job["type"], job["event_at"], job["data"]), separators=(",", ":")
        )
        result = await self._post(
            job["url"], job["secret"], signing.message_id(job["event_id"]), body
        )
        outcome = decide(job["attempts"], result, self.rand, self.schedule)
        if result.status_code is not None:
            span.set_attribute("http.response.status_code", result.status_code)
        span.set_attribute("webhook.outcome", outcome.status)
        if not result.ok:
            tracing.failed(span, None, result.error or "")
        async with db.transaction(self.pool) as conn:
            recorded = await db.fetch_one(
                conn,
                "record_webhook_attempt",
                {
                    "id": job["id"],
                    "attempt": job["attempts"],
                    "status": outcome.status,
                    "delay": outcome.delay,
                    "status_code": result.status_code,
                    "error": result.error,
                    "attempt_id": uuid.uuid4(),
                    "attempted_at": result.attempted_at,
                    "duration_ms": result.duration_ms,
                },
            )
            if recorded is None:
                log.info("webhook_attempt_superseded", delivery_id=str(job["id"]))
                return
            if outcome.disable is not None:
                subject = {"deliveryId": str(job["id"]), "eventType": job["type"]}
                await endpoints.disable(
                    conn,
                    job["endpoint_id"],
                    outcome.disable,
                    alert={**subject, "lastError": result.error} if outcome.exhausted else None,
                )
        metrics.webhook_delivery("retrying" if outcome.status == "pending" else outcome.status)
        log.info(
            "webhook_attempt",
            delivery_id=str(job["id"]),
            attempt=job["attempts"],
            status_code=result.status_code,
            outcome=outcome.status,
            next_in=outcome.delay,
        )

    async def _post(self, url: str, stored_secret: str, msg_id: str, body: str) -> Attempt:
        at = datetime.now(UTC)
        start = time.perf_counter()
        try:
            secret = self.secrets.open(stored_secret)
            dest = await destinations.check(
                url, allow_private=self.allow_private, resolver=self.resolver, timeout=self.timeout
            )
        except (destinations.DestinationRefused, destinations.UnresolvedName) as exc:
            return Attempt(at, _ms_since(start), None, f"{type(exc).__name__}: {exc}")
        except SecretKeyError as exc:
            log.error("webhook_secret_unreadable", error=str(exc))
            return Attempt(at, _ms_since(start), None, f"{type(exc).__name__}: {exc}")
        headers = {
            "content-type": "application/json",
            "host": dest.host_header(),
            **signing.headers(secret, msg_id, at, body),
        }
        tracing.inject(headers)  # the receiver may continue the trace (W3C traceparent)
        extensions = {"sni_hostname": dest.sni} if dest.sni else {}
        failure = "no address"
        for address in dest.addresses:
            try:
                # The answer's body is never read: it is not the tenant's to see through us.
                async with self.http.stream(
                    "POST",
                    dest.request_url(address),
                    content=body.encode(),
                    headers=headers,
                    extensions=extensions,
                ) as r:
                    status, retry_after = r.status_code, r.headers.get("retry-after")
            except httpx.ConnectError as exc:
                failure = type(exc).__name__
                continue  # the next address the name resolved to (every one was checked)
            except _SEND_ERRORS as exc:
                return Attempt(at, _ms_since(start), None, type(exc).__name__)
            error = None if 200 <= status < 300 else f"HTTP {status}"
            wait = signing.retry_after(retry_after, datetime.now(UTC))
            return Attempt(at, _ms_since(start), status, error, wait)
        return Attempt(at, _ms_since(start), None, failure)

    async def run(self, waker: db.Waker) -> None:
        """Deliver due work until cancelled, up to ``concurrency`` at once."""
        await db.claim_loop(
            self._claimed,
            self._deliver,
            concurrency=self.concurrency,
            waker=waker,
            topic="webhooks",
            poll=self.poll,
            name="webhook_worker",
            linger=CLAIM_LINGER_S,
        )


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)
