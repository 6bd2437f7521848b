"""The GPS fix against the geofence, as SVG geometry in metres around the site (no tiles)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from proveniq_core.verify.analysis import EARTH_RADIUS_M, distance_m


@dataclass(frozen=True, slots=True)
class FixDrawing:
    """What the template draws: the site at (0, 0), north up, in metres."""

    extent: float
    """Half the side of the square view."""
    fence: float
    fix_x: float
    fix_y: float
    accuracy: float
    distance: float
    scale: float
    """A round length for the scale bar."""
    font: float

    @property
    def view_box(self) -> str:
        e = self.extent
        return f"{-e:.1f} {-e:.1f} {2 * e:.1f} {2 * e:.1f}"

    @property
    def verdict(self) -> str:
        """The geofence check's rule, drawn: pass, fail or review."""
        if self.distance + self.accuracy <= self.fence:
            return "pass"
        if self.distance - self.accuracy > self.fence:
            return "fail"
        return "review"


def _round_length(target: float) -> float:
    """The largest 1, 2 or 5 times a power of ten not above ``target``."""
    power = 10.0 ** math.floor(math.log10(max(target, 1e-9)))
    for step in (5, 2, 1):
        if step * power <= target:
            return float(step * power)
    return float(power)


def drawing(
    site_lat: float,
    site_lon: float,
    fence: float,
    fix_lat: float,
    fix_lon: float,
    accuracy: float,
) -> FixDrawing:
    """Place the fix east/north of the site (equirectangular: fine at geofence scale)."""
    east = math.radians(fix_lon - site_lon) * math.cos(math.radians(site_lat)) * EARTH_RADIUS_M
    north = math.radians(fix_lat - site_lat) * EARTH_RADIUS_M
    dist = distance_m(site_lat, site_lon, fix_lat, fix_lon)
    extent = max(fence, dist + accuracy, 10.0) * 1.15
    return FixDrawing(
        extent=extent,
        fence=fence,
        fix_x=east,
        fix_y=-north,
        accuracy=accuracy,
        distance=dist,
        scale=_round_length(extent / 2),
        font=extent * 0.1,
    )
