"""What ``observability/metrics.py`` exposes, and the metric references in PromQL, for the
checks of the alert rules and the dashboard."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

from proveniq_core.observability import metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

_SELECTOR = re.compile(r"\b(core_[a-z_]+)\b(?:\{([^}]*)\})?")
_MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
_RECORDED = re.compile(r"\bcore:[a-z0-9_:]+")


def exposed() -> dict[str, frozenset[str]]:
    """Every sample name Prometheus scrapes from ``metrics.py``, with its label names."""
    names: dict[str, frozenset[str]] = {}
    for metric in vars(metrics).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        labels = frozenset(metric._labelnames)  # prometheus_client has no public accessor
        [family] = metric.describe()
        if family.type == "counter":
            names[f"{family.name}_total"] = labels
        elif family.type == "histogram":
            names[f"{family.name}_bucket"] = labels | {"le"}
            names[f"{family.name}_count"] = names[f"{family.name}_sum"] = labels
        else:
            names[family.name] = labels
    return names


def references(expr: str) -> list[tuple[str, set[str]]]:
    """The ``core_*`` metrics an expression selects, each with the labels it matches on."""
    return [
        (name, set(_MATCHER.findall(matchers or ""))) for name, matchers in _SELECTOR.findall(expr)
    ]


def recorded(expr: str) -> set[str]:
    """The recording rules (``core:…``) an expression reads."""
    return set(_RECORDED.findall(expr))


def unknown_references(expr: str) -> list[str]:
    """What ``expr`` selects that ``metrics.py`` does not expose (name, or a label of it)."""
    known = exposed()
    problems = []
    for name, labels in references(expr):
        if name not in known:
            problems.append(name)
        elif extra := labels - known[name] - {"job", "instance"}:
            problems.append(f"{name} has no label {sorted(extra)}")
    return problems
