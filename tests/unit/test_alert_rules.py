"""The Prometheus alert rules fit the metrics Core exposes (promtool itself runs in CI)."""

from __future__ import annotations

import re
from typing import Any

import yaml
from prometheus_client.utils import floatToGoString

from proveniq_core.api.app import create_app
from proveniq_core.observability import metrics
from tests.unit.metric_names import DEPLOY, recorded, unknown_references

REPO = DEPLOY.parent

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


def test_the_seeds_the_slo_and_the_paging_alerts_are_all_there() -> None:
    """The seed's four alerts, the SLO burn-rate pair, exhausted retries, and what pages an
    on-call (docs/operations.md); each with a severity, a summary and a pending period."""
    assert {rule["alert"] for rule in ALERTS} == {
        "LockerCircuitOpen",
        "LedgerCircuitOpen",
        "HighSagaCompensationRate",
        "DLQBacklog",
        "RetryQueueExhausted",
        "AssetRegistrationLatencyBudgetBurnFast",
        "AssetRegistrationLatencyBudgetBurnSlow",
        "CoreProcessDown",
        "CoreApiAbsent",
        "CoreWorkersAbsent",
        "SagasNotClaimed",
        "ReviewBacklogHigh",
        "ReviewDeadlineNear",
        "AuditSealingBehind",
        "WebhookEndpointDisabled",
        "VerificationsFailing",
        "SagaCompensationFailed",
        "DatabasePoolSaturated",
        "MqttDisconnected",
        "MqttDisconnectedEverywhere",
        "OpsAlertCritical",
        "OpsAlertWarning",
    }
    for rule in ALERTS:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert re.fullmatch(r"\d+[mh]", rule["for"]), rule["alert"]


def test_every_alert_has_a_runbook_that_says_what_to_do() -> None:
    """``runbook_url`` names docs/runbooks/<alert>.md, which exists and says what the alert
    means, how to confirm it (a CLI command or an API route) and what to do."""
    for rule in ALERTS:
        name = rule["alert"]
        assert rule["annotations"]["runbook_url"] == f"docs/runbooks/{name}.md", name
        text = (REPO / "docs" / "runbooks" / f"{name}.md").read_text()
        assert text.startswith(f"# {name}\n"), name
        for heading in ("## What it means", "## Confirm", "## What to do"):
            assert f"\n{heading}\n" in text, (name, heading)
        confirm = text.split("## Confirm", 1)[1].split("## What to do", 1)[0]
        assert re.search(r"`(proveniq |GET /|curl |promtool |psql )", confirm), name


def test_every_alert_has_a_promtool_test_that_fires_it_and_one_that_does_not() -> None:
    """alerts_test.yml fires each alert at least once and expects it silent at least once, so
    promtool (run in CI) proves both its firing and its not firing."""
    tests = yaml.safe_load((DEPLOY / "prometheus" / "alerts_test.yml").read_text())["tests"]
    cases = [case for group in tests for case in group["alert_rule_test"]]
    fired = {case["alertname"] for case in cases if case["exp_alerts"]}
    silent = {case["alertname"] for case in cases if not case["exp_alerts"]}
    names = {rule["alert"] for rule in ALERTS}
    assert names - fired == set()
    assert names - silent == set()
    for case in cases:
        for alert in case["exp_alerts"]:
            expected = f"docs/runbooks/{case['alertname']}.md"
            assert alert["exp_annotations"]["runbook_url"] == expected


def test_the_ops_alert_rules_leave_out_only_codes_core_raises() -> None:
    """The ops-alert rules skip the codes that have a rule of their own; each skipped code is
    one Core really stores (a renamed code would otherwise page twice)."""
    rules = [r for r in ALERTS if r["alert"] in ("OpsAlertCritical", "OpsAlertWarning")]
    source = "\n".join(p.read_text() for p in (REPO / "src").rglob("*.py"))
    for rule in rules:
        [skipped] = re.findall(r'code!~"([^"]+)"', rule["expr"])
        for code in skipped.split("|"):
            assert f'"{code}"' in source, code


def test_verification_outcomes_exist_at_zero_so_the_first_failure_is_an_increase() -> None:
    """A counter born at its first event hides that event from increase(): the verification
    outcomes VerificationsFailing watches are exported at 0 before anything happens (the
    saga outcomes are declared with each saga, see declare_saga)."""
    for outcome in ("verified", "rejected", "manual_review", "failed"):
        value = metrics.REGISTRY.get_sample_value(
            "core_verification_outcomes_total", {"outcome": outcome}
        )
        assert value is not None, outcome


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
    matchers = {m for rule in RULES for m in re.findall(r'\ble=~?"([^"]+)"', rule["expr"])}
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
