"""The Grafana dashboard loads and queries only what Core exposes."""

from __future__ import annotations

import json
from typing import Any

import yaml

from proveniq_core.observability import metrics
from tests.unit.metric_names import DEPLOY, recorded, references, unknown_references

DASHBOARD: dict[str, Any] = json.loads((DEPLOY / "grafana" / "proveniq-core.json").read_text())
PANELS = [p for p in DASHBOARD["panels"] if p["type"] != "row"]
RECORDS = {
    rule["record"]
    for group in yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    for rule in group["rules"]
    if "record" in rule
}


def exprs(panel: dict[str, Any]) -> list[str]:
    return [target["expr"] for target in panel["targets"]]


def test_the_dashboard_is_importable() -> None:
    """A current schema, a Prometheus datasource variable every panel uses, unique ids."""
    assert DASHBOARD["schemaVersion"] >= 36
    [variable] = [v for v in DASHBOARD["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    source = {"type": "prometheus", "uid": f"${{{variable['name']}}}"}
    for panel in PANELS:
        assert panel["datasource"] == source, panel["title"]
        assert panel["targets"] and all(t["datasource"] == source for t in panel["targets"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))


def test_every_panel_queries_exposed_metrics_or_recorded_rules() -> None:
    """Every metric (and label) a panel selects is defined in metrics.py; every ``core:``
    series is a recording rule of alerts.yml."""
    problems = {
        panel["title"]: [p for e in exprs(panel) for p in unknown_references(e)]
        + sorted({r for e in exprs(panel) for r in recorded(e)} - RECORDS)
        for panel in PANELS
    }
    assert {title: found for title, found in problems.items() if found} == {}


def test_the_dashboard_covers_the_slo_steps_circuits_queue_and_outcomes() -> None:
    """Percentiles of POST /api/assets with the SLO's lines on bucket boundaries, and a panel
    for each of the step timings, circuits, retry queue, compensation share, Verify and
    webhook outcomes."""
    used = {name for panel in PANELS for e in exprs(panel) for name, _ in references(e)}
    assert used >= {
        "core_orchestration_latency_seconds_bucket",
        "core_saga_step_duration_seconds_bucket",
        "core_circuit_breaker_state",
        "core_circuit_breaker_open_devices",
        "core_dlq_depth",
        "core_sagas_total",
        "core_verification_outcomes_total",
        "core_webhook_deliveries_total",
    }
    [slo] = [
        p
        for p in PANELS
        if any('operation="POST /api/assets"' in e for e in exprs(p))
        and any("histogram_quantile(0.99" in e for e in exprs(p))
    ]
    lines = [s["value"] for s in slo["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert lines == [None, 0.5, 1.5, 3]
    assert set(lines[1:]) <= set(metrics.LATENCY_BUCKETS)
