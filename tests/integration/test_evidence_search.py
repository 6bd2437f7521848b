"""The near-duplicate photo search (docs/architecture.md §5): through the band index it finds
every photo of another asset within the similar distance (at most 8 bits), the nearest first,
and nothing farther."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime

from proveniq_core import db
from tests.integration.conftest import new_asset

BANDS = [range(7 * i, 7 * i + 7) for i in range(8)] + [range(56, 64)]


def signed(h: int) -> int:
    """A 64-bit hash as PostgreSQL's bigint holds it."""
    return h - (1 << 64) if h >= 1 << 63 else h


def flip(h: int, bits: list[int]) -> int:
    for b in bits:
        h ^= 1 << b
    return h


async def _asset_with_photo(pool: db.Pool, phash: int) -> str:
    """A new asset whose verification holds one photo with this perceptual hash."""
    asset_id = await new_asset(pool)
    verification_id = uuid.uuid4()
    async with db.transaction(pool) as conn:
        await db.execute(
            conn,
            "insert_verification",
            {"id": verification_id, "asset_id": asset_id, "tenant_id": "acme"},
        )
        await db.execute(
            conn,
            "insert_evidence",
            {
                "id": uuid.uuid4(),
                "verification_id": verification_id,
                "asset_id": asset_id,
                "tenant_id": "acme",
                "sha256": uuid.uuid4().hex * 2,
                "content_type": "image/jpeg",
                "size_bytes": 1,
                "phash": signed(phash),
                "captured_at": datetime.now(UTC),
                "lat": 1.0,
                "lon": 2.0,
                "accuracy_m": 5.0,
            },
        )
    return asset_id


async def nearest(pool: db.Pool, phash: int, asset_id: str, within: int = 8) -> db.Row | None:
    async with db.connection(pool) as conn:
        return await db.fetch_one(
            conn,
            "nearest_evidence",
            {"phash": signed(phash), "asset_id": asset_id, "within": within},
        )


async def test_every_photo_within_eight_bits_is_found_and_none_farther(pool: db.Pool) -> None:
    rng = random.Random(7)
    base = rng.getrandbits(64) | (1 << 63)  # the sign bit set: a negative bigint
    stored = await _asset_with_photo(pool, base)
    asking = str(uuid.uuid4())  # another asset's photo asks

    # The pigeonhole edge: one bit in eight of the nine bands is still found; one in each
    # band (9 bits) is not.
    for untouched in range(len(BANDS)):
        bits = [rng.choice(band) for i, band in enumerate(BANDS) if i != untouched]
        row = await nearest(pool, flip(base, bits), asking)
        assert row is not None, f"8 bits apart, band {untouched} shared: not found"
        assert (str(row["asset_id"]), row["distance"]) == (stored, 8)
    assert await nearest(pool, flip(base, [rng.choice(b) for b in BANDS]), asking) is None

    # Any k bits anywhere.
    for _ in range(40):
        for k in range(11):
            row = await nearest(pool, flip(base, rng.sample(range(64), k)), asking)
            if k <= 8:
                assert row is not None and row["distance"] == k, k
            else:
                assert row is None, k

    assert await nearest(pool, flip(base, [0, 20, 40]), asking, within=2) is None
    assert await nearest(pool, base, stored) is None  # an asset's own photo is not a duplicate


async def test_the_nearest_of_several_close_photos_is_returned(pool: db.Pool) -> None:
    rng = random.Random(11)
    base = rng.getrandbits(64) & ~(1 << 63)  # a positive bigint
    far = await _asset_with_photo(pool, flip(base, [1, 2, 3, 4, 5, 6]))
    near = await _asset_with_photo(pool, flip(base, [60, 61]))
    row = await nearest(pool, base, str(uuid.uuid4()))
    assert row is not None
    assert (str(row["asset_id"]), row["distance"]) == (near, 2)
    row = await nearest(pool, base, near)  # the near photo's own asset asks: the far one
    assert row is not None
    assert (str(row["asset_id"]), row["distance"]) == (far, 6)
