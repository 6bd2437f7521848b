"""Evidence routes: an asset's photos, listed with where and when they were taken, and served.

Scope ``assets:read``; another tenant's asset is a 404. Blobs are content-addressed and may be
shared across assets and tenants; access goes through the caller's own evidence rows.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Response
from pydantic import BaseModel, Field

from proveniq_core import db
from proveniq_core.api.auth import require
from proveniq_core.api.deps import CoreDep
from proveniq_core.api.models import ERRORS
from proveniq_core.errors import CoreError, NotFoundError
from proveniq_core.ledger import assets
from proveniq_core.ledger.keys import Principal

router = APIRouter(tags=["evidence"])

Reader = Annotated[Principal, Depends(require("assets:read"))]
Sha256 = Annotated[str, Path(pattern="^[0-9a-f]{64}$", description="lowercase hex SHA-256")]


class GpsFix(BaseModel):
    lat: float
    lon: float
    accuracyM: float = Field(description="the device's reported accuracy radius, metres")


class EvidenceLinks(BaseModel):
    content: str = Field(description="the photo's bytes")


class EvidenceView(BaseModel):
    sha256: str
    contentType: str = Field(description="detected from the bytes, not the device's claim")
    size: int = Field(description="bytes")
    capturedAt: datetime | None = Field(description="when the device says it was taken")
    gps: GpsFix | None = Field(description="where the device says it was taken")
    verificationId: str
    storedAt: datetime
    links: EvidenceLinks


class EvidenceList(BaseModel):
    items: list[EvidenceView]


def evidence_view(row: dict[str, Any]) -> EvidenceView:
    gps = None
    if row["lat"] is not None and row["lon"] is not None:
        gps = GpsFix(lat=row["lat"], lon=row["lon"], accuracyM=row["accuracy_m"] or 0.0)
    return EvidenceView(
        sha256=row["sha256"],
        contentType=row["content_type"],
        size=row["size_bytes"],
        capturedAt=row["captured_at"],
        gps=gps,
        verificationId=str(row["verification_id"]),
        storedAt=row["created_at"],
        links=EvidenceLinks(content=f"/api/assets/{row['asset_id']}/evidence/{row['sha256']}"),
    )


@router.get("/api/assets/{asset_id}/evidence", response_model=EvidenceList, responses=ERRORS)
async def list_evidence(asset_id: str, core: CoreDep, principal: Reader) -> EvidenceList:
    """The asset's evidence photos, oldest first."""
    async with db.connection(core.pool) as conn:
        await assets.get(conn, principal.tenant_id, asset_id)
        rows = await db.fetch_all(
            conn, "list_evidence", {"asset_id": asset_id, "tenant_id": principal.tenant_id}
        )
    return EvidenceList(items=[evidence_view(r) for r in rows])


@router.get(
    "/api/assets/{asset_id}/evidence/{sha256}",
    response_class=Response,
    responses={
        **ERRORS,
        200: {
            "description": "the photo, with the content type detected when it was stored",
            "content": {"image/*": {}, "application/octet-stream": {}},
        },
    },
)
async def get_evidence_content(
    asset_id: str, sha256: Sha256, core: CoreDep, principal: Reader
) -> Response:
    """One evidence photo's bytes; immutable, so cacheable for good."""
    async with db.connection(core.pool) as conn:
        await assets.get(conn, principal.tenant_id, asset_id)
        row = await db.fetch_one(
            conn,
            "get_evidence",
            {"asset_id": asset_id, "tenant_id": principal.tenant_id, "sha256": sha256},
        )
    if row is None:
        raise NotFoundError(f"asset {asset_id} has no evidence {sha256}")
    try:
        data = await asyncio.to_thread(core.evidence.get, sha256)
    except FileNotFoundError:
        raise CoreError(f"evidence blob {sha256} is missing from the store") from None
    return Response(
        content=data,
        media_type=row["content_type"],
        headers={
            "ETag": f'"{sha256}"',
            "Cache-Control": "private, max-age=31536000, immutable",
            "X-Content-Type-Options": "nosniff",
        },
    )
