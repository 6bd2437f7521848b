"""The console's pure parts: the saga timeline's geometry, the fix drawn against the
geofence, the checks as a reviewer reads them, and where sign-in may send the browser."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from proveniq_core.console import geo, timeline
from proveniq_core.console.reviews import check_rows
from proveniq_core.console.web import ago, hms, safe_next
from proveniq_core.verify.analysis import Evidence, Site, analyze, distance_m

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def step(name: str, i: int, start_ms: float, ms: float, **extra: object) -> dict[str, object]:
    return {
        "name": name,
        "step_index": i,
        "phase": "execute",
        "status": "completed",
        "attempt": 1,
        "started_at": T0 + timedelta(milliseconds=start_ms),
        "finished_at": T0 + timedelta(milliseconds=start_ms + ms),
        "error": None,
    } | extra


def test_timeline_bars_share_one_axis_and_compensations_sit_below_it() -> None:
    """Bars are placed by start and sized by duration on one axis; a failed attempt carries
    its error code; compensations are drawn below the axis."""
    saga = {"created_at": T0, "finished_at": T0 + timedelta(milliseconds=400)}
    steps = [
        step("create_ledger_record", 0, 0, 100),
        step("link_locker", 1, 100, 200, status="failed", error={"code": "E_LOCKER_HARDWARE"}),
        step("create_ledger_record", 0, 300, 100, phase="compensate"),
    ]
    t = timeline.build(saga, steps)
    first, failed, undo = t.bars
    assert t.span_ms == 400
    assert failed.x - first.x == pytest.approx(first.width)  # starts where the first ended
    assert failed.width == pytest.approx(2 * first.width)
    assert (failed.kind, "E_LOCKER_HARDWARE" in failed.detail) == ("fail", True)
    assert undo.kind == "compensate" and undo.y > t.axis_y > failed.y
    assert [text for _, text in t.ticks] == ["0.0 ms", "100 ms", "200 ms", "300 ms", "400 ms"]


def test_a_running_step_reaches_now() -> None:
    """An unfinished attempt is drawn to now and says it is running."""
    saga = {"created_at": T0, "finished_at": None}
    steps = [step("link_locker", 1, 0, 0) | {"finished_at": None}]
    t = timeline.build(saga, steps, now=T0 + timedelta(seconds=2))
    [bar] = t.bars
    assert "running" in bar.detail and t.span_ms == 2000


@pytest.mark.parametrize(
    ("accuracy", "fence", "verdict"), [(10.0, 100.0, "pass"), (200.0, 100.0, "review")]
)
def test_the_drawing_applies_the_geofence_rule(accuracy: float, fence: float, verdict: str) -> None:
    """The fix 40 m north of the site: inside the fence when precise, straddling it when
    not; the view holds the fence and the whole accuracy ring."""
    lat, lon = 48.8566, 2.3522
    north = lat + 40 / 111_195
    d = geo.drawing(lat, lon, fence, north, lon, accuracy)
    assert d.verdict == verdict
    assert d.fix_x == pytest.approx(0, abs=0.01) and d.fix_y == pytest.approx(-40, abs=0.5)
    assert d.distance == pytest.approx(distance_m(lat, lon, north, lon))
    assert d.extent >= max(fence, d.distance + accuracy)
    assert d.scale in (10, 20, 50, 100, 200, 500)


def test_check_rows_show_each_measurement_beside_its_threshold() -> None:
    """From a real analysis: the GPS row shows distance, accuracy and the fence."""
    ev = Evidence((), 48.8566, 2.3522, 180.0, T0)
    analysis = analyze(ev, Site(48.8566, 2.3522, 100.0), now=T0)
    rows = {r.name: r for r in check_rows(analysis.checks)}
    gps = rows["gps_in_geofence"]
    assert gps.verdict == "review"
    assert gps.value == "0 m ± 180 m" and gps.threshold == "distance + accuracy ≤ 100 m"
    assert rows["timestamp_fresh"].threshold == "≤ 300 s"


def test_sign_in_only_goes_back_into_the_console() -> None:
    """An absolute, protocol-relative or backslashed next URL becomes the overview."""
    assert safe_next("/console/reviews?x=1") == "/console/reviews?x=1"
    for bad in ("https://evil.example/", "//evil.example/console", "/console\\..", "", None):
        assert safe_next(bad) == "/console"


def test_times_read_as_people_say_them() -> None:
    """Countdowns in h:m:s (negative past due); relative times both ways."""
    assert hms(timedelta(hours=4, minutes=51, seconds=10)) == "04:51:10"
    assert hms(-75) == "-00:01:15"
    assert ago(T0 - timedelta(minutes=4), now=T0) == "4 min ago"
    assert ago(T0 + timedelta(hours=3), now=T0) == "in 3 h"
