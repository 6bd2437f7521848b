"""A saga as bars on one time axis: one bar per step attempt, compensations below the axis.

Pure geometry for an SVG ``viewBox`` of ``WIDTH`` units: the template only draws it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

WIDTH = 1000.0
LABEL = 300.0  # the left column: step names
ROW = 26.0
AXIS_GAP = 30.0


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    detail: str
    kind: str
    """ok, fail, running, deferred, interrupted, compensate, verify."""
    x: float
    y: float
    width: float
    title: str


@dataclass(frozen=True, slots=True)
class Timeline:
    bars: list[Bar]
    axis_y: float
    height: float
    ticks: list[tuple[float, str]]
    span_ms: float

    @property
    def view_box(self) -> str:
        return f"0 0 {WIDTH:.0f} {self.height:.0f}"

    @property
    def label_width(self) -> float:
        return LABEL


def _ms(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds() * 1000


def _label_ms(ms: float) -> str:
    if ms < 10:
        return f"{ms:.1f} ms"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    return f"{ms / 60_000:.1f} min"


def _kind(status: str, phase: str) -> str:
    if status == "failed":
        return "fail"
    if phase == "compensate":
        return "compensate"
    return {"completed": "ok"}.get(status, status)


def build(
    saga: dict[str, Any],
    steps: list[dict[str, Any]],
    verification: dict[str, Any] | None = None,
    *,
    now: datetime | None = None,
) -> Timeline:
    """Lay out ``steps`` (rows of ``saga_steps``) and, if given, the verification's run."""
    now = now or datetime.now(UTC)
    start = saga["created_at"]
    spans: list[tuple[str, str, str, datetime, datetime, str]] = []
    # (label, detail, kind, from, to, phase)
    for s in steps:
        end = s["finished_at"] or now
        error = (s["error"] or {}).get("code")
        attempt = f" #{s['attempt']}" if s["attempt"] > 1 else ""
        label = f"{s['name']}{attempt}"
        detail = _label_ms(_ms(s["started_at"], end)) + (f" · {error}" if error else "")
        if s["finished_at"] is None:
            detail += " · running"
        spans.append(
            (label, detail, _kind(s["status"], s["phase"]), s["started_at"], end, s["phase"])
        )
    if verification is not None and verification.get("created_at") is not None:
        v_end = verification.get("completed_at") or now
        detail = _label_ms(_ms(verification["created_at"], v_end)) + f" · {verification['status']}"
        spans.append(
            ("verify (worker)", detail, "verify", verification["created_at"], v_end, "verify")
        )
    end = max([b[4] for b in spans] + [saga.get("finished_at") or start])
    span_ms = max(_ms(start, end), 1.0)
    scale = (WIDTH - LABEL - 10) / span_ms

    forward = [b for b in spans if b[5] != "compensate"]
    backward = [b for b in spans if b[5] == "compensate"]
    bars: list[Bar] = []
    y = 6.0
    for label, detail, kind, a, b, _ in forward:
        bars.append(_bar(label, detail, kind, a, b, start, scale, y))
        y += ROW
    axis_y = y + 4
    y = axis_y + AXIS_GAP - 8
    for label, detail, kind, a, b, _ in backward:
        bars.append(_bar(label, detail, kind, a, b, start, scale, y))
        y += ROW
    ticks = [
        (LABEL + f * (WIDTH - LABEL - 10), _label_ms(f * span_ms)) for f in (0, 0.25, 0.5, 0.75, 1)
    ]
    height = (y if backward else axis_y + AXIS_GAP) + 4
    return Timeline(bars, axis_y, height, ticks, span_ms)


def _bar(
    label: str,
    detail: str,
    kind: str,
    a: datetime,
    b: datetime,
    start: datetime,
    scale: float,
    y: float,
) -> Bar:
    x = LABEL + _ms(start, a) * scale
    width = max(_ms(a, b) * scale, 3.0)
    title = f"{label}: {detail}; started {a.astimezone(UTC):%H:%M:%S.%f}"[:-3] + " UTC"
    return Bar(label, detail, kind, x, y, width, title)
