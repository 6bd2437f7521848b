"""The Helm chart deploy/helm/proveniq, linted and rendered by Helm itself.

There is no ``helm`` binary here (Debian does not package it; only PyPI, npm and Debian are
reachable), so this uses ``helm-python-sdk``: a PyPI wheel that binds Helm's official Go SDK
(v4) through a C library. ``helm.lint`` is ``helm lint`` and ``Chart.render`` is
``helm template``: the real template engine, Sprig functions, ``required``, hooks and all.

What this proves: the chart lints without warnings; with the default values (and with the
switches operators flip) it renders the expected objects; the Deployments run the image's
``proveniq`` entry point with ``serve --role api|worker`` as the image's non-root user, probe
``/healthz`` and ``/readyz`` on the port they listen on, take the database and MQTT URLs from
a Secret that has those keys; each Service and PodDisruptionBudget selects exactly its role's
pods; the migration is a Helm hook Job; the ServiceMonitor scrapes both roles with the
``job``/``role`` labels the alert rules select on.

What it does not prove: that a cluster accepts the objects (no API-server schema validation
and no Kubernetes here), nor that the image builds (no Docker engine); the compose topology
test runs the same processes without containers.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.unit.metric_names import DEPLOY

CHART = DEPLOY / "helm" / "proveniq"
REPO = DEPLOY.parent
RELEASE = "core"
ROLES = ("api", "worker")


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """``helm template core deploy/helm/proveniq`` with ``values``: the objects rendered."""
    with helm.Chart.load(CHART) as chart:
        files = chart.render(values, name=RELEASE, namespace="prod", is_install=True)
    return [
        doc
        for name, text in files.items()
        if name.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def image_user() -> int:
    """The uid the Dockerfile's runtime stage runs as."""
    [user] = re.findall(r"^USER (\d+)", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    return int(user)


def test_the_chart_lints_clean() -> None:
    """``helm lint`` finds no error and no warning, with the defaults and strict."""
    for strict in (False, True):
        report = helm.lint(CHART, strict=strict)
        assert report["errors"] == []
        assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_the_default_values_render_the_production_shape() -> None:
    """API and worker Deployments, their Services and PodDisruptionBudgets, the Secret, the
    shared data-dir claim, the migration Job and a ServiceMonitor."""
    kinds = Counter(o["kind"] for o in render())
    assert kinds == {
        "Deployment": 2,
        "Service": 2,
        "PodDisruptionBudget": 2,
        "Secret": 1,
        "PersistentVolumeClaim": 1,
        "Job": 1,
        "ServiceMonitor": 1,
    }


def test_each_role_runs_the_entry_point_probed_and_non_root() -> None:
    """``serve --role R`` under the image's entry point, as the image's uid, probes on
    /healthz and /readyz at the port it listens on, the URLs from the Secret's keys."""
    objects = render()
    secret = one(objects, "Secret", f"{RELEASE}-proveniq")
    for role in ROLES:
        deploy = one(objects, "Deployment", f"{RELEASE}-proveniq-{role}")
        pod = deploy["spec"]["template"]["spec"]
        [container] = pod["containers"]
        assert "command" not in container  # the image's ENTRYPOINT: proveniq
        assert container["args"] == ["serve", "--role", role]
        env = {e["name"]: e for e in container["env"]}
        assert env["PROVENIQ_HOST"]["value"] == "0.0.0.0"  # noqa: S104 (in the pod: all of it)
        [port] = container["ports"]
        assert (
            port["name"] == "http" and str(port["containerPort"]) == env["PROVENIQ_PORT"]["value"]
        )
        probes = {
            p: container[p]["httpGet"] for p in ("startupProbe", "livenessProbe", "readinessProbe")
        }
        assert {p: g["path"] for p, g in probes.items()} == {
            "startupProbe": "/healthz",
            "livenessProbe": "/healthz",
            "readinessProbe": "/readyz",
        }
        assert {g["port"] for g in probes.values()} == {"http"}
        for var, key in (
            ("PROVENIQ_DATABASE_URL", "database-url"),
            ("PROVENIQ_MQTT_URL", "mqtt-url"),
        ):
            ref = env[var]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": secret["metadata"]["name"], "key": key}
            assert secret["stringData"][key]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == image_user()
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes[mounts["/tmp"]]["emptyDir"] == {}  # noqa: S108 (the pod's writable /tmp)
        claim = volumes[mounts[env["PROVENIQ_HOME"]["value"]]]["persistentVolumeClaim"]
        assert one(objects, "PersistentVolumeClaim", claim["claimName"])["spec"]["accessModes"] == [
            "ReadWriteMany"
        ]


def test_services_and_disruption_budgets_select_exactly_their_role() -> None:
    """Each Deployment's selector matches its pods; its Service and PodDisruptionBudget select
    them and not the other role's, nor the migration Job's pods."""
    objects = render()
    pods = {
        role: one(objects, "Deployment", f"{RELEASE}-proveniq-{role}")["spec"]["template"]
        for role in ROLES
    }
    job_pod = one(objects, "Job", f"{RELEASE}-proveniq-migrate")["spec"]["template"]
    for role in ROLES:
        name = f"{RELEASE}-proveniq-{role}"
        labels = pods[role]["metadata"]["labels"]
        deploy = one(objects, "Deployment", name)
        assert selects(deploy["spec"]["selector"]["matchLabels"], labels)
        for selector in (
            one(objects, "Service", name)["spec"]["selector"],
            one(objects, "PodDisruptionBudget", name)["spec"]["selector"]["matchLabels"],
        ):
            assert selects(selector, labels)
            others = [pods[r]["metadata"]["labels"] for r in ROLES if r != role]
            assert not any(selects(selector, o) for o in [*others, job_pod["metadata"]["labels"]])
        service = one(objects, "Service", name)
        assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
        assert one(objects, "PodDisruptionBudget", name)["spec"]["minAvailable"] == 1
        assert labels["app.kubernetes.io/component"] == role


def test_the_migration_is_a_hook_job_of_the_same_image() -> None:
    """``proveniq migrate`` as a Job Helm runs after install and before each upgrade, with the
    image and Secret of the Deployments."""
    objects = render()
    job = one(objects, "Job", f"{RELEASE}-proveniq-migrate")
    hooks = set(job["metadata"]["annotations"]["helm.sh/hook"].split(","))
    assert hooks == {"post-install", "pre-upgrade"}
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    api = one(objects, "Deployment", f"{RELEASE}-proveniq-api")["spec"]["template"]["spec"]
    assert container["image"] == api["containers"][0]["image"] == "proveniq-core:0.1.0"
    env = {e["name"]: e for e in container["env"]}
    assert env["PROVENIQ_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"] == "database-url"


def test_the_service_monitor_scrapes_both_roles_as_the_alert_rules_expect() -> None:
    """The ServiceMonitor selects both Services, scrapes /metrics on their named port and
    labels targets job="proveniq-core" and role=<component>: what alerts.yml selects on."""
    objects = render()
    monitor = one(objects, "ServiceMonitor", f"{RELEASE}-proveniq")
    selector = monitor["spec"]["selector"]
    [expression] = selector["matchExpressions"]
    for role in ROLES:
        labels = one(objects, "Service", f"{RELEASE}-proveniq-{role}")["metadata"]["labels"]
        assert selects(selector["matchLabels"], labels)
        assert labels[expression["key"]] in expression["values"]
    [endpoint] = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    relabel = {r["targetLabel"]: r for r in endpoint["relabelings"]}
    assert relabel["job"]["replacement"] == "proveniq-core"
    assert relabel["role"]["sourceLabels"] == [
        "__meta_kubernetes_service_label_app_kubernetes_io_component"
    ]
    rules = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    assert 'up{job="proveniq-core", role=~"api|all"}' in rules
    assert 'up{job="proveniq-core", role=~"worker|all"}' in rules


def test_operators_switches_render_what_they_say() -> None:
    """An existing Secret replaces the chart's; no persistence gives each pod an emptyDir;
    the ServiceMonitor and the migration Job can be left out; the image tag is taken."""
    objects = render(
        {
            "existingSecret": "core-urls",
            "persistence": {"enabled": False},
            "serviceMonitor": {"enabled": False},
            "migration": {"enabled": False},
            "image": {"repository": "registry.example/proveniq-core", "tag": "1.2.3"},
            "worker": {"replicas": 5, "poolMax": 8},
        }
    )
    kinds = Counter(o["kind"] for o in objects)
    assert kinds == {"Deployment": 2, "Service": 2, "PodDisruptionBudget": 2}
    worker = one(objects, "Deployment", f"{RELEASE}-proveniq-worker")
    assert worker["spec"]["replicas"] == 5
    pod = worker["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == "registry.example/proveniq-core:1.2.3"
    env = {e["name"]: e for e in container["env"]}
    assert env["PROVENIQ_POOL_MAX"]["value"] == "8"
    assert env["PROVENIQ_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "core-urls"
    assert {v["name"]: v for v in pod["volumes"]}["home"] == {"name": "home", "emptyDir": {}}


def test_a_missing_database_url_is_refused_at_render_time() -> None:
    """Without a database URL and without an existing Secret, rendering fails and says so."""
    with pytest.raises(helm.HelmError, match=r"database\.url is required"):
        render({"database": {"url": ""}})


def test_the_chart_files_are_all_templates_helm_reads() -> None:
    """Every file under templates/ is rendered (no stray file that Helm would ignore)."""
    with helm.Chart.load(CHART) as chart:
        rendered = set(chart.render(name=RELEASE, namespace="prod"))
    on_disk = {
        f"proveniq/templates/{p.name}"
        for p in Path(CHART / "templates").iterdir()
        if not p.name.startswith("_")
    }
    assert on_disk == rendered
