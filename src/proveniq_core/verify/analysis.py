"""Evidence analysis: each check passes or fails with a reason; no I/O here."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from PIL import Image, UnidentifiedImageError

EARTH_RADIUS_M = 6_371_008.8


@dataclass(frozen=True, slots=True)
class Photo:
    claimed_sha256: str
    content_type: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True, slots=True)
class Evidence:
    photos: tuple[Photo, ...]
    lat: float
    lon: float
    accuracy_m: float
    timestamp: datetime


@dataclass(frozen=True, slots=True)
class Site:
    lat: float
    lon: float
    geofence_m: float


@dataclass(slots=True)
class Analysis:
    """The outcome with one entry per check: ``{"ok": bool, ...measurements}``."""

    status: str
    reasons: list[str] = field(default_factory=list)
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)


class MalformedEvidenceError(ValueError):
    """The device's evidence reply does not have the protocol's shape."""


def parse_evidence(result: dict[str, Any]) -> Evidence:
    try:
        photos = tuple(
            Photo(
                str(p["sha256"]), str(p["contentType"]), base64.b64decode(p["data"], validate=True)
            )
            for p in result.get("photos", [])
        )
        gps = result["gps"]
        return Evidence(
            photos,
            float(gps["lat"]),
            float(gps["lon"]),
            float(gps.get("accuracyM", 0.0)),
            datetime.fromisoformat(str(result["timestamp"])),
        )
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise MalformedEvidenceError(f"malformed evidence: {exc}") from exc


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle (haversine) distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(a))


def _decodable(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
        return True
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return False


def analyze(ev: Evidence, site: Site, *, now: datetime, skew_s: float) -> Analysis:
    """Run every check; ``verified`` only when all pass, else ``rejected`` with reasons."""
    out = Analysis("verified")

    def check(name: str, ok: bool, reason: str, **measured: Any) -> None:
        out.checks[name] = {"ok": ok, **measured}
        if not ok:
            out.reasons.append(reason)

    check("photo_present", bool(ev.photos), "no photo in the evidence", count=len(ev.photos))
    mismatched = [p.claimed_sha256 for p in ev.photos if p.sha256 != p.claimed_sha256]
    check(
        "photo_hash_matches",
        not mismatched,
        "photo content does not match the device's hash",
        mismatched=mismatched,
    )
    undecodable = [p.sha256 for p in ev.photos if not _decodable(p.data)]
    check("photo_decodable", not undecodable, "photo cannot be decoded", undecodable=undecodable)

    dist = distance_m(ev.lat, ev.lon, site.lat, site.lon)
    check(
        "gps_in_geofence",
        dist <= site.geofence_m,
        f"GPS position is {dist:.0f} m from the locker site (geofence {site.geofence_m:.0f} m)",
        distanceM=round(dist, 1),
        geofenceM=site.geofence_m,
    )
    if ev.timestamp.tzinfo is None:
        check("timestamp_fresh", False, "evidence timestamp has no time zone", skewS=None)
    else:
        skew = abs((now - ev.timestamp).total_seconds())
        check(
            "timestamp_fresh",
            skew <= skew_s,
            f"evidence timestamp is {skew:.0f} s off (allowed {skew_s:.0f} s)",
            skewS=round(skew, 3),
            allowedS=skew_s,
        )
    if out.reasons:
        out.status = "rejected"
    return out
