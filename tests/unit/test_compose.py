"""deploy/compose.yaml and its Prometheus, Mosquitto and Grafana files fit together and fit
the alert rules (``docker-compose config`` and ``promtool check config`` run in CI)."""

from __future__ import annotations

import re
from typing import Any

import yaml

from tests.unit.metric_names import DEPLOY

COMPOSE: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
SCRAPE: dict[str, Any] = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())


def serve_role(service: dict[str, Any]) -> str | None:
    command = service.get("command") or []
    return command[2] if command[:2] == ["serve", "--role"] else None


def test_the_topology_is_one_api_two_workers_a_fleet_and_their_dependencies() -> None:
    """One ``serve --role api``, two ``--role worker``, ``proveniq simulate``, the migration,
    PostgreSQL, Mosquitto, Prometheus and Grafana."""
    roles = {name: serve_role(s) for name, s in SERVICES.items() if serve_role(s)}
    assert roles == {"api": "api", "worker-1": "worker", "worker-2": "worker"}
    assert SERVICES["simulate"]["command"][0] == "simulate"
    assert SERVICES["migrate"]["command"] == ["migrate"]
    assert {"postgres", "mosquitto", "prometheus", "grafana", "register-lockers"} <= SERVICES.keys()
    for name in roles:
        env = SERVICES[name]["environment"]
        assert env["PROVENIQ_DATABASE_URL"].startswith("postgresql://")
        assert re.fullmatch(
            r"mqtt://core:\$\{MQTT_CORE_PASSWORD:-[^}]+\}@mosquitto:1883", env["PROVENIQ_MQTT_URL"]
        )
        assert (
            SERVICES[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        )


def test_prometheus_scrapes_every_core_process_with_the_labels_the_rules_select() -> None:
    """Every serve service is a target of job proveniq-core labelled with its role, and the
    rules file is loaded."""
    assert SCRAPE["rule_files"] == ["alerts.yml"]
    [job] = SCRAPE["scrape_configs"]
    assert job["job_name"] == "proveniq-core"
    targets = {
        target.split(":")[0]: group["labels"]["role"]
        for group in job["static_configs"]
        for target in group["targets"]
    }
    roles = {name: serve_role(s) for name, s in SERVICES.items() if serve_role(s)}
    assert targets == roles
    rules = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    assert 'up{job="proveniq-core", role=~"api|all"}' in rules


def test_mounted_files_exist_and_the_broker_requires_credentials() -> None:
    """Every file the compose file mounts is in the repository; Mosquitto's config refuses
    anonymous clients, reads the password file the container writes, and turns Nagle off."""
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), (name, source)
    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    settings = dict(
        line.split(None, 1) for line in conf.splitlines() if line and not line.startswith("#")
    )
    assert settings["allow_anonymous"] == "false"
    assert settings["set_tcp_nodelay"] == "true"
    command = SERVICES["mosquitto"]["command"][0]
    assert f"mosquitto_passwd -c -b {settings['password_file']} core" in command
    assert "mosquitto_passwd -b /mosquitto/auth/passwd sim" in command
    grafana = " ".join(SERVICES["grafana"]["volumes"])
    assert "./grafana/proveniq-core.json:" in grafana and "provisioning/datasources" in grafana
