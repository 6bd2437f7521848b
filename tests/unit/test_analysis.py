"""Evidence analysis: every check passes on good evidence and fails with a reason on bad."""

from __future__ import annotations

import base64
import hashlib
import io
import random
from datetime import UTC, datetime, timedelta

import pytest
from PIL import Image
from pydantic import ValidationError

from proveniq_core.config import Settings
from proveniq_core.locker.simulator import evidence_photo
from proveniq_core.verify.analysis import (
    EARTH_RADIUS_M,
    Evidence,
    Limits,
    MalformedEvidenceError,
    Match,
    Photo,
    Site,
    analyze,
    distance_m,
    hamming,
    inspect_photo,
    parse_evidence,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
SITE = Site(48.8566, 2.3522, 100.0)
M_PER_DEG = EARTH_RADIUS_M * 3.141592653589793 / 180  # metres per degree of latitude


def photo_of(data: bytes) -> Photo:
    return Photo(hashlib.sha256(data).hexdigest(), "image/jpeg", data)


def encoded(image: Image.Image, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def noisy_grey(spread: int) -> bytes:
    """A grey PNG whose pixels vary uniformly by ±``spread`` levels."""
    rng = random.Random(spread)
    image = Image.new("L", (64, 48))
    image.putdata([128 + rng.randint(-spread, spread) for _ in range(64 * 48)])
    return encoded(image, "PNG")


def good_photo() -> Photo:
    data = evidence_photo("asset-1")
    return Photo(hashlib.sha256(data).hexdigest(), "image/jpeg", data)


def evidence(**over: object) -> Evidence:
    fields: dict[str, object] = {
        "photos": (good_photo(),),
        "lat": SITE.lat,
        "lon": SITE.lon,
        "accuracy_m": 5.0,
        "timestamp": NOW - timedelta(seconds=2),
    }
    fields.update(over)
    return Evidence(**fields)  # type: ignore[arg-type]


def test_good_evidence_is_verified() -> None:
    """Photo, position and time all in order: verified with no reasons."""
    out = analyze(evidence(), SITE, now=NOW)
    assert out.status == "verified"
    assert out.reasons == []
    assert all(c["ok"] and c["verdict"] == "pass" for c in out.checks.values())
    assert set(out.checks) == {
        "photo_present",
        "photo_hash_matches",
        "photo_decodable",
        "photo_not_blank",
        "photo_not_duplicate",
        "gps_in_geofence",
        "timestamp_fresh",
    }


@pytest.mark.parametrize(
    ("change", "check"),
    [
        ({"photos": ()}, "photo_present"),
        ({"photos": (Photo("0" * 64, "image/jpeg", evidence_photo("a")),)}, "photo_hash_matches"),
        (
            {"photos": (Photo(hashlib.sha256(b"nope").hexdigest(), "image/jpeg", b"nope"),)},
            "photo_decodable",
        ),
        ({"lat": SITE.lat + 0.01}, "gps_in_geofence"),  # ~1.1 km north
        ({"timestamp": NOW - timedelta(minutes=10)}, "timestamp_fresh"),
        ({"timestamp": NOW + timedelta(minutes=10)}, "timestamp_fresh"),
        ({"timestamp": datetime(2026, 11, 25, 12, 0)}, "timestamp_fresh"),  # naive
        (
            {"photos": (photo_of(encoded(Image.new("RGB", (40, 30), (9, 9, 9)))),)},
            "photo_not_blank",
        ),
    ],
)
def test_each_failed_check_rejects_with_its_reason(change: dict[str, object], check: str) -> None:
    """One bad property fails exactly its check and the outcome is rejected."""
    out = analyze(evidence(**change), SITE, now=NOW)
    assert out.status == "rejected"
    assert not out.checks[check]["ok"]
    assert [name for name, c in out.checks.items() if not c["ok"]] == [check]
    assert len(out.reasons) == 1


def test_distance_is_haversine_metres() -> None:
    """One hundredth of a degree of latitude is about 1.11 km."""
    assert distance_m(48.0, 2.0, 48.01, 2.0) == pytest.approx(1111.95, rel=1e-3)
    assert distance_m(1.0, 1.0, 1.0, 1.0) == 0


def test_parse_evidence_reads_the_protocol_shape() -> None:
    """A device reply parses into photos, GPS and an aware timestamp; garbage raises."""
    data = evidence_photo("x")
    reply = {
        "photos": [
            {
                "sha256": hashlib.sha256(data).hexdigest(),
                "contentType": "image/jpeg",
                "data": base64.b64encode(data).decode(),
            }
        ],
        "gps": {"lat": 1.5, "lon": 2.5, "accuracyM": 4},
        "timestamp": NOW.isoformat(),
    }
    ev = parse_evidence(reply)
    assert ev.photos[0].data == data
    assert (ev.lat, ev.lon, ev.accuracy_m, ev.timestamp) == (1.5, 2.5, 4.0, NOW)
    for bad in (
        {},
        {**reply, "gps": "here"},
        {**reply, "photos": [{"data": "***"}]},
        {**reply, "timestamp": "yesterday"},
        {**reply, "gps": {"lat": 91, "lon": 0}},
        {**reply, "gps": {"lat": 1, "lon": 2, "accuracyM": -1}},
        {**reply, "gps": {"lat": 1, "lon": 2, "accuracyM": "nan"}},
    ):
        with pytest.raises(MalformedEvidenceError):
            parse_evidence(bad)


def at_distance(metres: float) -> dict[str, object]:
    """Evidence fields placing the fix ``metres`` north of the site."""
    return {"lat": SITE.lat + metres / M_PER_DEG}


@pytest.mark.parametrize(
    ("metres", "accuracy", "verdict"),
    [
        (50, 49, "pass"),  # d + a = 99 <= 100: the whole accuracy circle is inside
        (50, 51, "review"),  # d + a = 101: straddles the fence
        (0, 150, "review"),  # at the site, but too imprecise to tell
        (120, 30, "review"),  # outside, but d - a = 90 <= 100: could be inside
        (300, 199, "fail"),  # d - a = 101 > 100: the whole circle is outside
        (101, 0, "fail"),  # an exact fix just outside
    ],
)
def test_geofence_takes_the_reported_accuracy_into_account(
    metres: float, accuracy: float, verdict: str
) -> None:
    """Inside with its accuracy: pass; outside with it: fail; straddling: manual review."""
    assert distance_m(SITE.lat + metres / M_PER_DEG, SITE.lon, SITE.lat, SITE.lon) == (
        pytest.approx(metres, abs=0.01)
    )
    out = analyze(evidence(accuracy_m=accuracy, **at_distance(metres)), SITE, now=NOW)
    assert out.checks["gps_in_geofence"]["verdict"] == verdict
    assert (
        out.status == {"pass": "verified", "review": "manual_review", "fail": "rejected"}[verdict]
    )
    assert len(out.reasons) == (verdict != "pass")


@pytest.mark.parametrize(
    ("distance", "verdict"),
    [(0, "fail"), (4, "fail"), (5, "review"), (8, "review"), (9, "pass"), (None, "pass")],
)
def test_duplicate_thresholds_on_the_perceptual_distance(
    distance: int | None, verdict: str
) -> None:
    """<= 4 bits from another asset's photo: duplicate; <= 8: review; further or none: pass."""
    nearest = None if distance is None else Match(distance, "other-asset")
    out = analyze(evidence(), SITE, now=NOW, nearest=nearest)
    assert out.checks["photo_not_duplicate"]["verdict"] == verdict
    assert out.checks["photo_not_duplicate"]["distance"] == distance
    assert (
        out.status == {"pass": "verified", "review": "manual_review", "fail": "rejected"}[verdict]
    )


def test_duplicate_thresholds_are_configurable() -> None:
    """A stricter configuration turns distance 6 from review into a duplicate."""
    limits = Limits(duplicate_distance=6, similar_distance=10)
    out = analyze(evidence(), SITE, now=NOW, limits=limits, nearest=Match(6, None))
    assert out.status == "rejected"
    assert "near-duplicate" in out.reasons[0]
    assert out.checks["photo_not_duplicate"]["matchAssetId"] is None


@pytest.mark.parametrize("name", ["verify_similar_distance", "verify_duplicate_distance"])
def test_a_distance_the_photo_index_cannot_search_is_refused(name: str) -> None:
    """The band index finds every photo within 8 bits and no farther: 9 is a configuration
    error, named, not a search that silently misses photos."""
    assert getattr(Settings.model_validate({name: 8}), name) == 8
    with pytest.raises(ValidationError, match=rf"{name}\n.*less than or equal to 8"):
        Settings.model_validate({name: 9})


@pytest.mark.parametrize(("skew", "ok"), [(299.0, True), (300.0, True), (300.5, False)])
def test_timestamp_skew_is_inclusive_and_configurable(skew: float, ok: bool) -> None:
    """A timestamp exactly ``skew_s`` away is fresh, a moment more is not, either way in time."""
    for sign in (1, -1):
        ts = NOW - sign * timedelta(seconds=skew)
        out = analyze(evidence(timestamp=ts), SITE, now=NOW, limits=Limits(skew_s=300))
        assert out.checks["timestamp_fresh"]["ok"] is ok
    loose = analyze(
        evidence(timestamp=NOW - timedelta(seconds=900)), SITE, now=NOW, limits=Limits(skew_s=1000)
    )
    assert loose.status == "verified"


def test_blank_threshold_is_the_grey_level_spread() -> None:
    """A photo varying by ±2 grey levels is blank under the default 4.0, not under 1.0."""
    faint = photo_of(noisy_grey(2))
    assert 0 < inspect_photo(faint.data).stddev < 4.0  # type: ignore[operator]
    assert analyze(evidence(photos=(faint,)), SITE, now=NOW).status == "rejected"
    relaxed = analyze(evidence(photos=(faint,)), SITE, now=NOW, limits=Limits(blank_stddev=1.0))
    assert relaxed.checks["photo_not_blank"]["ok"]
    assert inspect_photo(good_photo().data).stddev > 4.0  # type: ignore[operator]


def test_a_failure_outweighs_a_review_and_both_give_reasons() -> None:
    """Stale and imprecise: rejected, with one reason for each."""
    out = analyze(evidence(timestamp=NOW - timedelta(hours=1), accuracy_m=500.0), SITE, now=NOW)
    assert out.status == "rejected"
    assert out.checks["gps_in_geofence"]["verdict"] == "review"
    assert len(out.reasons) == 2


def test_inspect_detects_the_format_and_hashes_what_it_sees() -> None:
    """The content type comes from the bytes; a re-encoded photo keeps its perceptual hash."""
    jpeg = evidence_photo("asset-1")
    with Image.open(io.BytesIO(jpeg)) as image:
        png = encoded(image, "PNG")
    a, b = inspect_photo(jpeg), inspect_photo(png)
    assert (a.content_type, b.content_type) == ("image/jpeg", "image/png")
    assert a.sha256 != b.sha256
    assert a.phash is not None and b.phash is not None
    assert hamming(a.phash, b.phash) <= 2
    assert -(2**63) <= a.phash < 2**63  # fits a PostgreSQL bigint
    other = inspect_photo(evidence_photo("asset-2"))
    assert hamming(a.phash, other.phash or 0) > 8
    junk = inspect_photo(b"<html>not a photo</html>")
    assert (junk.content_type, junk.phash, junk.stddev, junk.decodable) == (
        "application/octet-stream",
        None,
        None,
        False,
    )


def test_hamming_counts_differing_bits_of_signed_hashes() -> None:
    """-1 and 0 differ in all 64 bits; a hash and itself in none."""
    assert hamming(-1, 0) == 64
    assert hamming(-(2**63), 2**63 - 1) == 64
    assert hamming(12345, 12345) == 0
    assert hamming(0b1011, 0b0001) == 2
