"""The verification worker: collect evidence from the locker, analyse it, settle the asset.

A failed collection (device offline, no answer in time, a fault or malformed reply) is
retried ``verify_retry_base`` seconds later, doubling each time; after
``verify_max_attempts`` attempts the verification is ``failed`` and an ops alert escalates it.
The asset stays ``linked``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime

import structlog
from opentelemetry import trace
from opentelemetry.context import Context

from proveniq_core import db
from proveniq_core.config import Settings
from proveniq_core.errors import CoreError, LockerError
from proveniq_core.ledger import alerts, assets, audit, outbox
from proveniq_core.locker.gateway import LockerGateway
from proveniq_core.observability import metrics, tracing
from proveniq_core.resilience.backoff import Backoff
from proveniq_core.verify import reviews
from proveniq_core.verify.analysis import (
    Evidence,
    Limits,
    MalformedEvidenceError,
    Match,
    Photo,
    PhotoFacts,
    Site,
    analyze,
    inspect_photo,
    parse_evidence,
)
from proveniq_core.verify.evidence import EvidenceStore

log = structlog.get_logger(__name__)
_COMMANDS = uuid.UUID("0b7e4f0c-5a53-4a3c-8f0e-7c2d9b1e6a44")
ACTOR = "system:verify"
FAILED_ALERT = "E_VERIFY_FAILED"
CLAIM_LINGER_S = 0.05
"""After a wake, the verify worker waits this long before it claims: verifications queued
in a burst are claimed in one commit. No client waits on a verification's start."""


def _log_context(job: db.Row) -> AbstractContextManager[None]:
    """Bind the ids a verification's log lines carry (its asset's saga, asset and locker)."""
    context = {"verification_id": str(job["id"]), "asset_id": str(job["asset_id"])}
    if job.get("saga_id") is not None:
        context["saga_id"] = str(job["saga_id"])
    return structlog.contextvars.bound_contextvars(**context, locker_ref=job["locker_ref"])


def limits(settings: Settings) -> Limits:
    return Limits(
        skew_s=settings.verify_timestamp_skew,
        blank_stddev=settings.verify_blank_stddev,
        duplicate_distance=settings.verify_duplicate_distance,
        similar_distance=settings.verify_similar_distance,
    )


def inspect_and_store(store: EvidenceStore, photos: Sequence[Photo]) -> list[PhotoFacts]:
    """``inspect_photo`` of each photo, in order, then each photo stored in ``store``.

    Blocking (decoding and disk writes): async code runs it in one thread per job.
    """
    facts = [inspect_photo(p.data, p.sha256) for p in photos]
    for photo in photos:
        store.put(photo.data, sha256=photo.sha256)
    return facts


def retry_delay(settings: Settings, attempt: int) -> float:
    """Seconds before the attempt after ``attempt`` (1-based): base, then doubling."""
    return Backoff(settings.verify_retry_base).delay(attempt - 1)


async def _completed(conn: db.Conn, job: db.Row, outcome: str, reasons: list[str]) -> None:
    await outbox.emit(
        conn,
        job["tenant_id"],
        "verification.completed",
        {
            "assetId": str(job["asset_id"]),
            "verificationId": str(job["id"]),
            "outcome": outcome,
            "reasons": reasons,
        },
    )


class VerifyWorker:
    """Collects and analyses evidence, up to ``concurrency`` verifications at once; one at a
    time while ``yield_to()`` says a backlog of registrations comes first (a fleet's parked
    links retried after an outage, say): verification waits, nothing is dropped."""

    def __init__(
        self,
        pool: db.Pool,
        gateway: LockerGateway,
        store: EvidenceStore,
        settings: Settings,
        *,
        concurrency: int = 16,
        yield_to: Callable[[], bool] | None = None,
    ) -> None:
        self.pool = pool
        self.gateway = gateway
        self.store = store
        self.settings = settings
        self.concurrency = concurrency
        self.yield_to = yield_to

    async def process_next(self) -> bool:
        """Claim one due verification and carry it to its next state; False if none was due."""
        jobs = await self.claim(1)
        for job in jobs:
            await self._process(job)
        return bool(jobs)

    async def _process(self, job: db.Row) -> None:
        parent = await self._trace(job) if tracing.enabled() else None
        attributes = {
            "verification.id": str(job["id"]),
            "verification.attempt": job["attempts"],
            "asset.id": str(job["asset_id"]),
            "locker.ref": job["locker_ref"],
        }
        with _log_context(job), tracing.span("verify", attributes, parent=parent):
            await self._handle(job)

    async def _trace(self, job: db.Row) -> Context | None:
        """The trace of the registration that asked for this verification."""
        async with db.connection(self.pool) as conn:
            row = await db.fetch_one(conn, "asset_trace", {"asset_id": job["asset_id"]})
        return tracing.context_of(row["traceparent"] if row else None)

    async def claim(self, limit: int) -> list[db.Row]:
        """Up to ``limit`` due verifications, claimed under a lease in one commit, each with
        its locker's ref and site."""
        lease = self.settings.verify_collect_timeout + 30
        async with db.connection(self.pool) as conn:
            return await db.fetch_all(conn, "claim_verifications", {"lease": lease, "limit": limit})

    async def _claimed(self, limit: int) -> AsyncIterator[db.Row]:
        for job in await self.claim(limit):
            yield job

    async def _handle(self, job: db.Row) -> None:
        log.info("verification_collecting", verification_id=str(job["id"]), attempt=job["attempts"])
        try:
            result = await self.gateway.send(
                job["locker_ref"],
                "collect_evidence",
                command_id=str(uuid.uuid5(_COMMANDS, f"{job['id']}:{job['attempts']}")),
                asset_id=str(job["asset_id"]),
                timeout=self.settings.verify_collect_timeout,
            )
            evidence = parse_evidence(result)
        except (LockerError, MalformedEvidenceError) as exc:
            await self._retry_or_escalate(job, exc)
            return
        # Decoding photos is CPU-bound and storing them is disk I/O: off the event loop.
        facts = await asyncio.to_thread(inspect_and_store, self.store, evidence.photos)
        await self._settle(job, evidence, facts)

    async def _nearest(self, conn: db.Conn, job: db.Row, facts: list[PhotoFacts]) -> Match | None:
        """The evidence of another asset closest to any of these photos, if one is within
        the similar distance (None: nothing that close)."""
        best: Match | None = None
        within = self.settings.verify_similar_distance
        for f in facts:
            if f.phash is None:
                continue
            row = await db.fetch_one(
                conn,
                "nearest_evidence",
                {"phash": f.phash, "asset_id": job["asset_id"], "within": within},
            )
            if row is not None and (best is None or row["distance"] < best.distance):
                same_tenant = row["tenant_id"] == job["tenant_id"]
                best = Match(row["distance"], str(row["asset_id"]) if same_tenant else None)
        return best

    async def _settle(self, job: db.Row, evidence: Evidence, facts: list[PhotoFacts]) -> None:
        """Analyse the evidence and write the outcome, in one transaction (the look for a
        near-duplicate photo included)."""
        async with db.transaction(self.pool) as conn:
            current = await db.fetch_one(conn, "get_verification_for_update", {"id": job["id"]})
            if (
                current is None
                or current["status"] != "collecting"
                or current["asset_status"] != "linked"
            ):
                log.info("verification_superseded", verification_id=str(job["id"]))
                return
            outcome = analyze(
                evidence,
                Site(job["site_lat"], job["site_lon"], job["geofence_m"]),
                now=datetime.now(UTC),
                limits=limits(self.settings),
                facts=facts,
                nearest=await self._nearest(conn, job, facts),
            )
            status, reasons = outcome.status, outcome.reasons
            for photo, fact in zip(evidence.photos, facts, strict=True):
                await db.execute(
                    conn,
                    "insert_evidence",
                    {
                        "id": uuid.uuid4(),
                        "verification_id": job["id"],
                        "asset_id": job["asset_id"],
                        "tenant_id": job["tenant_id"],
                        "sha256": fact.sha256,
                        "content_type": fact.content_type,
                        "size_bytes": len(photo.data),
                        "phash": fact.phash,
                        "captured_at": evidence.timestamp,
                        "lat": evidence.lat,
                        "lon": evidence.lon,
                        "accuracy_m": evidence.accuracy_m,
                    },
                )
            hashes = [f.sha256 for f in facts]
            await db.execute(
                conn,
                "finish_verification",
                {
                    "id": job["id"],
                    "status": status,
                    "reasons": db.jsonb(reasons),
                    "checks": db.jsonb(outcome.checks),
                    "evidence": db.jsonb(
                        {
                            "photos": hashes,
                            "gps": {
                                "lat": evidence.lat,
                                "lon": evidence.lon,
                                "accuracyM": evidence.accuracy_m,
                            },
                            "timestamp": evidence.timestamp.isoformat(),
                        }
                    ),
                },
            )
            await assets.transition(
                conn, str(job["asset_id"]), status, actor=ACTOR, reason="; ".join(reasons) or None
            )
            await audit.record(
                conn,
                actor=ACTOR,
                action="verification.completed",
                entity_type="verification",
                entity_id=str(job["id"]),
                tenant_id=job["tenant_id"],
                after={"status": status, "reasons": reasons, "photos": hashes},
            )
            await _completed(conn, job, status, reasons)
            if status == "manual_review":
                await reviews.open_review(
                    conn,
                    verification_id=job["id"],
                    asset_id=job["asset_id"],
                    tenant_id=job["tenant_id"],
                    reasons=reasons,
                    timeout=self.settings.review_timeout,
                )
        metrics.verification_outcome(status)
        span = trace.get_current_span()
        span.set_attribute("verification.outcome", status)
        for name, check in outcome.checks.items():
            tracing.event(span, f"check {name}", check)
        log.info("verification_completed", verification_id=str(job["id"]), status=status)

    async def _retry_or_escalate(self, job: db.Row, exc: Exception) -> None:
        """Retry on a doubling schedule; after the last attempt, fail with an ops alert."""
        code = exc.code if isinstance(exc, CoreError) else "E_EVIDENCE_MALFORMED"
        error = f"{code}: {exc}"
        final = job["attempts"] >= self.settings.verify_max_attempts
        delay = retry_delay(self.settings, job["attempts"])
        async with db.transaction(self.pool) as conn:
            await db.execute(
                conn,
                "reschedule_verification",
                {
                    "id": job["id"],
                    "status": "failed" if final else "queued",
                    "error": error,
                    "delay": 0 if final else delay,
                },
            )
            if final:
                await audit.record(
                    conn,
                    actor=ACTOR,
                    action="verification.failed",
                    entity_type="verification",
                    entity_id=str(job["id"]),
                    tenant_id=job["tenant_id"],
                    after={"status": "failed", "error": code, "attempts": job["attempts"]},
                )
                await alerts.raise_alert(
                    conn,
                    code=FAILED_ALERT,
                    severity="critical",
                    message=(
                        f"evidence for asset {job['asset_id']} could not be collected from "
                        f"locker {job['locker_ref']} in {job['attempts']} attempts ({code}); "
                        "the asset stays linked, unverified"
                    ),
                    dedup_key=f"verification:{job['id']}:failed",
                    tenant_id=job["tenant_id"],
                    subject={
                        "assetId": str(job["asset_id"]),
                        "verificationId": str(job["id"]),
                        "lockerRef": job["locker_ref"],
                        "attempts": job["attempts"],
                        "error": code,
                    },
                )
                await _completed(conn, job, "failed", [error])
        if final:
            metrics.verification_outcome("failed")
        log.warning(
            "verification_attempt_failed",
            verification_id=str(job["id"]),
            attempt=job["attempts"],
            final=final,
            retry_in=None if final else delay,
            error=code,
        )

    async def run(self, waker: db.Waker) -> None:
        """Process due work until cancelled, up to ``concurrency`` at once."""
        await db.claim_loop(
            self._claimed,
            self._process,
            concurrency=self.concurrency,
            waker=waker,
            topic="verifications",
            poll=self.settings.poll_interval,
            name="verify_worker",
            linger=CLAIM_LINGER_S,
            limit=self._limit,
        )

    def _limit(self) -> int:
        return 1 if self.yield_to is not None and self.yield_to() else self.concurrency
