"""The Prometheus alert rules fit the metrics Core exposes (promtool itself runs in CI)."""

from __future__ import annotations

import re
from typing import Any

import yaml
from prometheus_client.utils import floatToGoString

from proveniq_core.api.app import create_app
from proveniq_core.observability import metrics
from tests.unit.metric_names import DEPLOY, recorded, unknown_references

RULES: list[dict[str, Any]] = [
    rule
    for group in yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    for rule in group["rules"]
]
RECORDS = {rule["record"] for rule in RULES if "record" in rule}
ALERTS = [rule for rule in RULES if "alert" in rule]


def test_every_rule_reads_only_exposed_metrics_and_labels() -> None:
    """Each expression selects metrics and labels that metrics.py defines, or recording rules
    of the same file: a renamed metric or label breaks this, not an alert in production."""
    problems = {
        rule.get("alert") or rule["record"]: unknown_references(rule["expr"])
        + sorted(recorded(rule["expr"]) - RECORDS)
        for rule in RULES
    }
    assert {name: found for name, found in problems.items() if found} == {}


def test_the_seeds_alerts_and_the_slo_alerts_are_all_there() -> None:
    """The seed's four alerts, the SLO burn-rate pair and exhausted retries; each with a
    severity, a summary and a pending period."""
    assert {rule["alert"] for rule in ALERTS} == {
        "LockerCircuitOpen",
        "LedgerCircuitOpen",
        "HighSagaCompensationRate",
        "DLQBacklog",
        "RetryQueueExhausted",
        "AssetRegistrationLatencyBudgetBurnFast",
        "AssetRegistrationLatencyBudgetBurnSlow",
    }
    for rule in ALERTS:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert re.fullmatch(r"\d+[mh]", rule["for"]), rule["alert"]


def test_the_compensation_alert_is_a_share_of_sagas() -> None:
    """Compensated sagas over ended sagas (the seed compared a per-second rate with 10 %)."""
    [rule] = [r for r in ALERTS if r["alert"] == "HighSagaCompensationRate"]
    expr = " ".join(rule["expr"].split())
    assert 'core_sagas_total{outcome=~"compensated|compensation_failed"}' in expr
    assert "/ sum by (saga) (rate(core_sagas_total[5m]))" in expr
    assert "core_saga_compensations_total" not in expr


def test_every_bucket_boundary_a_rule_reads_is_a_bucket() -> None:
    """A rule's ``le`` matches one of the latency buckets as prometheus_client writes it."""
    buckets = [floatToGoString(b) for b in metrics.LATENCY_BUCKETS]
    matchers = {m for rule in RULES for m in re.findall(r'le=~?"([^"]+)"', rule["expr"])}
    assert matchers
    for matcher in matchers:
        pattern = matcher.encode().decode("unicode_escape")  # YAML kept PromQL's escapes
        assert [b for b in buckets if re.fullmatch(pattern, b)], matcher


def test_the_slo_operation_is_a_route() -> None:
    """The ``operation`` label the rules select is how the middleware names a real route."""
    operations = {m for rule in RULES for m in re.findall(r'operation="([^"]+)"', rule["expr"])}
    paths = create_app(None).openapi()["paths"]
    routes = {f"{method.upper()} {path}" for path, ops in paths.items() for method in ops}
    assert operations == {"POST /api/assets"}
    assert operations <= routes
