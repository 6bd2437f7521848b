"""Evidence analysis: each check passes, fails or asks for review, with a reason; no I/O here.

The checks and their thresholds (``Limits``, set from ``PROVENIQ_VERIFY_*``):

- photo_present: at least one photo, else fail.
- photo_hash_matches: each photo's SHA-256 equals the device's claim, else fail.
- photo_decodable: every photo decodes as an image, else fail.
- photo_not_blank: every decodable photo has a grey-level standard deviation of at least
  ``blank_stddev`` (4.0 on 0-255), else fail.
- photo_not_duplicate: Hamming distance between the photo's 64-bit perceptual hash (pHash)
  and the closest evidence of another asset: <= ``duplicate_distance`` (4) fail,
  <= ``similar_distance`` (8) review, else pass.
- gps_in_geofence: with d the distance to the locker's site, a the reported accuracy and
  r the geofence radius (metres): d + a <= r pass; d - a > r fail; otherwise review (the
  accuracy circle straddles the fence).
- timestamp_fresh: an explicit time zone and |now - timestamp| <= ``skew_s`` (300 s),
  else fail.

Outcome: ``rejected`` when any check fails; otherwise ``manual_review`` when any check
asks for review (confidence is low: the evidence neither proves nor disproves the claim);
otherwise ``verified``. Every check that did not pass contributes one reason.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import imagehash
from PIL import Image, ImageStat, UnidentifiedImageError

EARTH_RADIUS_M = 6_371_008.8
OCTET_STREAM = "application/octet-stream"

Verdict = Literal["pass", "fail", "review"]
_Check = Callable[..., None]  # check(name, verdict, reason, **measured)
Outcome = Literal["verified", "rejected", "manual_review"]


@dataclass(frozen=True, slots=True)
class Photo:
    claimed_sha256: str
    content_type: str
    data: bytes
    sha256: str = field(init=False)
    """The SHA-256 of ``data``, computed once at construction."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", hashlib.sha256(self.data).hexdigest())


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


@dataclass(frozen=True, slots=True)
class Limits:
    """The thresholds of the checks (see the module docstring)."""

    skew_s: float = 300.0
    blank_stddev: float = 4.0
    duplicate_distance: int = 4
    similar_distance: int = 8


@dataclass(frozen=True, slots=True)
class PhotoFacts:
    """What the bytes of one photo say, measured once."""

    sha256: str
    content_type: str
    """Detected from the bytes (not the device's claim); ``application/octet-stream`` if none."""
    stddev: float | None
    """Grey-level standard deviation, 0-255 (0: one flat colour); None if undecodable."""
    phash: int | None
    """64-bit perceptual hash as a signed integer (a PostgreSQL bigint); None if undecodable."""

    @property
    def decodable(self) -> bool:
        return self.phash is not None


@dataclass(frozen=True, slots=True)
class Match:
    """The evidence of another asset closest to a photo, by perceptual hash."""

    distance: int
    asset_id: str | None
    """None when it belongs to another tenant: its id is not the caller's to see."""


@dataclass(slots=True)
class Analysis:
    """The outcome with one entry per check: ``{"ok", "verdict", ...measurements}``."""

    status: Outcome
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
        evidence = Evidence(
            photos,
            float(gps["lat"]),
            float(gps["lon"]),
            float(gps.get("accuracyM", 0.0)),
            datetime.fromisoformat(str(result["timestamp"])),
        )
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise MalformedEvidenceError(f"malformed evidence: {exc}") from exc
    if not (
        -90 <= evidence.lat <= 90
        and -180 <= evidence.lon <= 180
        and 0 <= evidence.accuracy_m < math.inf
    ):
        raise MalformedEvidenceError("malformed evidence: GPS fix out of range")
    return evidence


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle (haversine) distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(a))


def inspect_photo(data: bytes, sha256: str | None = None) -> PhotoFacts:
    """Decode ``data`` once: its format, grey-level spread and perceptual hash.

    ``sha256``: the SHA-256 of ``data`` if already known (computed here otherwise).
    CPU-bound (a large photo takes a while): run it in a thread from async code.
    """
    digest = hashlib.sha256(data).hexdigest() if sha256 is None else sha256
    try:
        with Image.open(io.BytesIO(data)) as img:
            content_type = Image.MIME.get(img.format or "", OCTET_STREAM)
            img.load()
            grey = img.convert("L")
            stddev = float(ImageStat.Stat(grey).stddev[0])
            unsigned = int(str(imagehash.phash(grey)), 16)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return PhotoFacts(digest, OCTET_STREAM, None, None)
    signed = unsigned - (1 << 64) if unsigned >= 1 << 63 else unsigned
    return PhotoFacts(digest, content_type, stddev, signed)


def hamming(a: int, b: int) -> int:
    """Bits that differ between two 64-bit hashes (signed or not)."""
    return ((a ^ b) & ((1 << 64) - 1)).bit_count()


def analyze(
    ev: Evidence,
    site: Site,
    *,
    now: datetime,
    limits: Limits | None = None,
    facts: Sequence[PhotoFacts] | None = None,
    nearest: Match | None = None,
) -> Analysis:
    """Run every check and decide the outcome (see the module docstring).

    ``facts``: ``inspect_photo`` of each photo, in order (computed here when not given).
    ``nearest``: the closest evidence of another asset to any of the photos, if any.
    """
    limits = limits or Limits()
    facts = [inspect_photo(p.data, p.sha256) for p in ev.photos] if facts is None else facts
    out = Analysis("verified")

    def check(name: str, verdict: Verdict, reason: str, **measured: Any) -> None:
        out.checks[name] = {"ok": verdict == "pass", "verdict": verdict, **measured}
        if verdict != "pass":
            out.reasons.append(reason)

    def passes(ok: bool) -> Verdict:
        return "pass" if ok else "fail"

    check(
        "photo_present", passes(bool(ev.photos)), "no photo in the evidence", count=len(ev.photos)
    )
    mismatched = [p.claimed_sha256 for p in ev.photos if p.sha256 != p.claimed_sha256]
    check(
        "photo_hash_matches",
        passes(not mismatched),
        "photo content does not match the device's hash",
        mismatched=mismatched,
    )
    undecodable = [f.sha256 for f in facts if not f.decodable]
    check(
        "photo_decodable",
        passes(not undecodable),
        "photo cannot be decoded as an image",
        undecodable=undecodable,
    )
    blank = [f.sha256 for f in facts if f.stddev is not None and f.stddev < limits.blank_stddev]
    check(
        "photo_not_blank",
        passes(not blank),
        f"photo is blank (grey-level spread below {limits.blank_stddev:g})",
        blank=blank,
        stddev=[None if f.stddev is None else round(f.stddev, 2) for f in facts],
        minStddev=limits.blank_stddev,
    )
    _duplicate(check, nearest, limits)
    _geofence(check, ev, site)
    if ev.timestamp.tzinfo is None:
        check("timestamp_fresh", "fail", "evidence timestamp has no time zone", skewS=None)
    else:
        skew = abs((now - ev.timestamp).total_seconds())
        check(
            "timestamp_fresh",
            passes(skew <= limits.skew_s),
            f"evidence timestamp is {skew:.0f} s off (allowed {limits.skew_s:.0f} s)",
            skewS=round(skew, 3),
            allowedS=limits.skew_s,
        )
    verdicts = {c["verdict"] for c in out.checks.values()}
    if "fail" in verdicts:
        out.status = "rejected"
    elif "review" in verdicts:
        out.status = "manual_review"
    return out


def _duplicate(check: _Check, nearest: Match | None, limits: Limits) -> None:
    measured = {
        "distance": None if nearest is None else nearest.distance,
        "matchAssetId": None if nearest is None else nearest.asset_id,
        "duplicateDistance": limits.duplicate_distance,
        "similarDistance": limits.similar_distance,
    }
    if nearest is None or nearest.distance > limits.similar_distance:
        check("photo_not_duplicate", "pass", "", **measured)
    elif nearest.distance <= limits.duplicate_distance:
        check(
            "photo_not_duplicate",
            "fail",
            f"photo is a near-duplicate of another asset's evidence "
            f"(perceptual distance {nearest.distance} <= {limits.duplicate_distance})",
            **measured,
        )
    else:
        check(
            "photo_not_duplicate",
            "review",
            f"photo resembles another asset's evidence "
            f"(perceptual distance {nearest.distance} <= {limits.similar_distance})",
            **measured,
        )


def _geofence(check: _Check, ev: Evidence, site: Site) -> None:
    dist, acc, fence = (
        distance_m(ev.lat, ev.lon, site.lat, site.lon),
        ev.accuracy_m,
        site.geofence_m,
    )
    measured = {"distanceM": round(dist, 1), "accuracyM": acc, "geofenceM": fence}
    where = f"GPS position is {dist:.0f} m (± {acc:.0f} m) from the locker site"
    if dist + acc <= fence:
        check("gps_in_geofence", "pass", "", **measured)
    elif dist - acc > fence:
        check("gps_in_geofence", "fail", f"{where}, outside its {fence:.0f} m geofence", **measured)
    else:
        check(
            "gps_in_geofence",
            "review",
            f"{where}: too imprecise to place inside its {fence:.0f} m geofence",
            **measured,
        )
