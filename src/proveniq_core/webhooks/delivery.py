"""The delivery worker: claim due deliveries, POST them signed, log each attempt, retry.

Any number of workers (in any number of processes) share the work: a delivery is claimed
with ``FOR UPDATE SKIP LOCKED`` under a lease, so a worker that dies mid-attempt only delays
it until the lease runs out.

The retry schedule (Standard Webhooks' recommendation): the first attempt at once, then
retries 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h after the previous failure: 8 attempts
over about 27.6 h. Each delay is lengthened by up to 20 % random jitter (never shortened,
so the schedule always spans more than 24 h). A 429 or 503 answer with ``Retry-After``
(seconds or an HTTP date) waits at least that long, up to 24 h.

Outcomes: a 2xx answer delivers; 410 Gone fails the delivery and disables the endpoint; any
other answer, a timeout or a connection error retries; a failure of the last attempt fails
the delivery, disables the endpoint and raises an ops alert (and so ``ops.alert``).
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

import httpx
import structlog

from proveniq_core import db
from proveniq_core.observability import metrics
from proveniq_core.resilience.backoff import stretch
from proveniq_core.webhooks import endpoints, outbox, signing

log = structlog.get_logger(__name__)

SCHEDULE: Final = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
"""Seconds before each retry: ``SCHEDULE[n - 1]`` after failed attempt ``n``."""
MAX_ATTEMPTS: Final = len(SCHEDULE) + 1
JITTER: Final = 0.2
MAX_RETRY_AFTER: Final = 86400.0
EXCERPT: Final = 200  # characters of a failed answer's body kept in the log
USER_AGENT: Final = "proveniq-core-webhooks/1"


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


def decide(attempt: int, result: Attempt, rand: Callable[[], float] = random.random) -> Outcome:
    """What follows attempt number ``attempt`` (1-based) of a delivery that got ``result``."""
    if result.ok:
        return Outcome("delivered")
    if result.status_code == 410:
        return Outcome("failed", disable="the receiver answered 410 Gone")
    if attempt >= MAX_ATTEMPTS:
        return Outcome(
            "failed",
            disable=f"{attempt} attempts failed over more than 24 h (last: {result.error})",
            exhausted=True,
        )
    delay = stretch(SCHEDULE[attempt - 1], JITTER, rand)
    if result.status_code in (429, 503) and result.retry_after is not None:
        delay = max(delay, min(result.retry_after, MAX_RETRY_AFTER))
    return Outcome("pending", delay)


class DeliveryWorker:
    def __init__(
        self,
        pool: db.Pool,
        *,
        timeout: float = 10.0,
        concurrency: int = 16,
        poll: float = 1.0,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.pool = pool
        self.timeout = timeout
        self.poll = poll
        self.rand = rand
        self.http = httpx.AsyncClient(
            timeout=timeout, follow_redirects=False, headers={"user-agent": USER_AGENT}
        )
        self.concurrency = concurrency

    async def aclose(self) -> None:
        await self.http.aclose()

    async def process_next(self) -> bool:
        """Claim one due delivery and make one attempt; False if none was due."""
        job = await self._claim()
        if job is None:
            return False
        await self._deliver(job)
        return True

    async def _claim(self) -> db.Row | None:
        async with db.transaction(self.pool) as conn:
            # The lease outlasts the longest attempt, so a live worker never loses it.
            return await db.fetch_one(
                conn, "claim_webhook_delivery", {"lease": self.timeout * 2 + 30}
            )

    async def _deliver(self, job: db.Row) -> None:
        body = json.dumps(
            outbox.payload(job["type"], job["event_at"], job["data"]), separators=(",", ":")
        )
        result = await self._post(
            job["url"], job["secret"], outbox.message_id(job["event_id"]), body
        )
        outcome = decide(job["attempts"], result, self.rand)
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

    async def _post(self, url: str, secret: str, msg_id: str, body: str) -> Attempt:
        at = datetime.now(UTC)
        headers = {"content-type": "application/json", **signing.headers(secret, msg_id, at, body)}
        start = time.perf_counter()
        try:
            async with self.http.stream("POST", url, content=body.encode(), headers=headers) as r:
                excerpt = ""
                if not r.is_success:
                    async for text in r.aiter_text():
                        excerpt += text
                        if len(excerpt) >= EXCERPT:
                            break
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, OSError, ValueError) as exc:
            failure = f"{type(exc).__name__}: {exc}".rstrip(": ")
            return Attempt(at, _ms_since(start), None, failure)
        error = None if r.is_success else f"HTTP {r.status_code}: {excerpt[:EXCERPT]}".rstrip(": ")
        wait = signing.retry_after(r.headers.get("retry-after"), datetime.now(UTC))
        return Attempt(at, _ms_since(start), r.status_code, error, wait)

    async def run(self, waker: db.Waker) -> None:
        """Deliver due work until cancelled, up to ``concurrency`` at once."""
        await db.work_loop(
            self._claim,
            self._deliver,
            concurrency=self.concurrency,
            waker=waker,
            topic="webhooks",
            poll=self.poll,
            name="webhook_worker",
        )


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)
