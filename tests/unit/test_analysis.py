"""Evidence analysis: every check passes on good evidence and fails with a reason on bad."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from proveniq_core.locker.simulator import evidence_photo
from proveniq_core.verify.analysis import (
    Evidence,
    MalformedEvidenceError,
    Photo,
    Site,
    analyze,
    distance_m,
    parse_evidence,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
SITE = Site(48.8566, 2.3522, 100.0)


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
    out = analyze(evidence(), SITE, now=NOW, skew_s=300)
    assert out.status == "verified"
    assert out.reasons == []
    assert all(c["ok"] for c in out.checks.values())
    assert set(out.checks) == {
        "photo_present",
        "photo_hash_matches",
        "photo_decodable",
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
    ],
)
def test_each_failed_check_rejects_with_its_reason(change: dict[str, object], check: str) -> None:
    """One bad property fails exactly its check and the outcome is rejected."""
    out = analyze(evidence(**change), SITE, now=NOW, skew_s=300)
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
    ):
        with pytest.raises(MalformedEvidenceError):
            parse_evidence(bad)
