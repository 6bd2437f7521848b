"""The verification worker: collect evidence from the locker, analyse it, settle the asset."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import structlog

from proveniq_core import db
from proveniq_core.config import Settings
from proveniq_core.errors import CoreError, LockerError
from proveniq_core.ledger import assets, audit
from proveniq_core.locker.gateway import LockerGateway
from proveniq_core.verify.analysis import (
    MalformedEvidenceError,
    Site,
    analyze,
    parse_evidence,
)
from proveniq_core.verify.evidence import EvidenceStore

log = structlog.get_logger(__name__)
_COMMANDS = uuid.UUID("0b7e4f0c-5a53-4a3c-8f0e-7c2d9b1e6a44")
ACTOR = "system:verify"


class VerifyWorker:
    def __init__(
        self,
        pool: db.Pool,
        gateway: LockerGateway,
        store: EvidenceStore,
        settings: Settings,
        *,
        concurrency: int = 16,
    ) -> None:
        self.pool = pool
        self.gateway = gateway
        self.store = store
        self.settings = settings
        self._slots = asyncio.Semaphore(concurrency)

    async def process_next(self) -> bool:
        """Claim one due verification and carry it to its next state; False if none was due."""
        claimed = await self._claim()
        if claimed is None:
            return False
        await self._handle(*claimed)
        return True

    async def _claim(self) -> tuple[db.Row, db.Row, db.Row] | None:
        async with db.transaction(self.pool) as conn:
            job = await db.fetch_one(
                conn, "claim_verification", {"lease": self.settings.verify_collect_timeout + 30}
            )
            if job is None:
                return None
            asset = await db.fetch_one(conn, "get_asset_for_update", {"id": job["asset_id"]})
            assert asset is not None
            locker = await assets.get_locker(conn, asset["tenant_id"], asset["locker_ref"])
        return job, asset, locker

    async def _handle(self, job: db.Row, asset: db.Row, locker: db.Row) -> None:
        log.info("verification_collecting", verification_id=str(job["id"]), attempt=job["attempts"])
        try:
            result = await self.gateway.send(
                asset["locker_ref"],
                "collect_evidence",
                command_id=str(uuid.uuid5(_COMMANDS, f"{job['id']}:{job['attempts']}")),
                asset_id=str(asset["id"]),
                timeout=self.settings.verify_collect_timeout,
            )
            evidence = parse_evidence(result)
        except (LockerError, MalformedEvidenceError) as exc:
            await self._retry_or_fail(job, exc)
            return
        hashes = [self.store.put(p.data) for p in evidence.photos]
        site = Site(locker["site_lat"], locker["site_lon"], locker["geofence_m"])
        outcome = analyze(
            evidence, site, now=datetime.now(UTC), skew_s=self.settings.verify_timestamp_skew
        )
        await self._settle(
            job,
            evidence.photos,
            hashes,
            outcome.status,
            outcome.reasons,
            {
                "checks": outcome.checks,
                "evidence": {
                    "photos": hashes,
                    "gps": {
                        "lat": evidence.lat,
                        "lon": evidence.lon,
                        "accuracyM": evidence.accuracy_m,
                    },
                    "timestamp": evidence.timestamp.isoformat(),
                },
            },
        )

    async def _settle(
        self,
        job: db.Row,
        photos: Any,
        hashes: list[str],
        status: str,
        reasons: list[str],
        detail: dict[str, Any],
    ) -> None:
        async with db.transaction(self.pool) as conn:
            current = await db.fetch_one(conn, "get_verification_for_update", {"id": job["id"]})
            if (
                current is None
                or current["status"] != "collecting"
                or current["asset_status"] != "linked"
            ):
                log.info("verification_superseded", verification_id=str(job["id"]))
                return
            for photo, digest in zip(photos, hashes, strict=True):
                await db.execute(
                    conn,
                    "insert_evidence",
                    {
                        "id": uuid.uuid4(),
                        "verification_id": job["id"],
                        "asset_id": job["asset_id"],
                        "tenant_id": job["tenant_id"],
                        "sha256": digest,
                        "content_type": photo.content_type,
                        "size_bytes": len(photo.data),
                    },
                )
            await db.execute(
                conn,
                "finish_verification",
                {
                    "id": job["id"],
                    "status": status,
                    "reasons": db.jsonb(reasons),
                    "checks": db.jsonb(detail["checks"]),
                    "evidence": db.jsonb(detail["evidence"]),
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
        log.info("verification_completed", verification_id=str(job["id"]), status=status)

    async def _retry_or_fail(self, job: db.Row, exc: Exception) -> None:
        code = exc.code if isinstance(exc, CoreError) else "E_EVIDENCE_MALFORMED"
        final = job["attempts"] >= self.settings.verify_max_attempts
        delay = self.settings.verify_retry_base * 2 ** (job["attempts"] - 1)
        async with db.transaction(self.pool) as conn:
            await db.execute(
                conn,
                "reschedule_verification",
                {
                    "id": job["id"],
                    "status": "failed" if final else "queued",
                    "error": f"{code}: {exc}",
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
        log.warning(
            "verification_attempt_failed",
            verification_id=str(job["id"]),
            attempt=job["attempts"],
            final=final,
            error=code,
        )

    async def run(self, waker: db.Waker) -> None:
        """Process due work until cancelled, up to ``concurrency`` at once.

        Wakes on NOTIFY or every poll interval; a database outage backs off, never crashes.
        """
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                await self._slots.acquire()
                try:
                    claimed = await self._claim()
                except CoreError as exc:
                    log.warning("verify_worker_error", error=str(exc), code=exc.code)
                    claimed = None
                if claimed is None:
                    self._slots.release()
                    await waker.wait("verifications", self.settings.poll_interval)
                    continue
                task = asyncio.create_task(self._handle_guarded(*claimed))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle_guarded(self, job: db.Row, asset: db.Row, locker: db.Row) -> None:
        try:
            await self._handle(job, asset, locker)
        except CoreError as exc:  # the lease expires and another claim retries it
            log.warning("verify_worker_error", error=str(exc), code=exc.code)
        finally:
            self._slots.release()
