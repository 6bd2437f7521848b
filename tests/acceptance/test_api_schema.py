"""Fuzz the OpenAPI surface with schemathesis: no 5xx, no schema violation.

The schema is the app's own (``create_app(…).openapi()``, the document ``/openapi.json``
serves; the test checks that the running service serves exactly it). The calls go over
HTTP to the real ``proveniq serve`` on a fresh database with its embedded broker and
simulated fleet (``locker-001`` …, the lockerRef of the schema's examples, so the
registration example really links), with an admin key (all scopes). Each operation gets
its explicit examples, boundary values (coverage phase) and a bounded number of generated
cases, positive and negative; each response must not be a 5xx, must use a status code the
operation declares, with a declared content type, and must match the declared schema
(errors included: every declared error is the one envelope). Generation is deterministic,
so CI runs the same cases every time.

Why HTTP to a subprocess rather than schemathesis' in-process ASGI transport: the app needs
a running Core, whose pool, gateway and workers live on one event loop, while schemathesis
drives an ASGI app from an event loop of its own in another thread.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
import schemathesis
from psycopg.conninfo import make_conninfo
from schemathesis import Case

from proveniq_core.api.app import create_app
from proveniq_core.embedded import free_port

READY_TIMEOUT = 60.0
MAX_EXAMPLES = 25  # generated cases per operation, on top of examples and coverage cases

OPENAPI = create_app(None).openapi()  # routes and models only: no running Core needed

schema = schemathesis.openapi.from_dict(
    OPENAPI,
    config=schemathesis.Config.from_dict(
        {
            "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True},
            "suppress-health-check": ["too_slow"],  # a busy CI machine is not a defect
            "checks": {
                "enabled": False,
                "not_a_server_error": {"enabled": True},
                "status_code_conformance": {"enabled": True},
                "content_type_conformance": {"enabled": True},
                "response_schema_conformance": {"enabled": True},
            },
        }
    ),
)


@dataclass
class Served:
    url: str
    key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture(scope="module")
def module_database_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database shared by this module's cases."""
    name = f"proveniq_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template_db}")
    yield make_conninfo(pg_admin_url, dbname=name)
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def served(module_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``proveniq serve`` on a fresh database: embedded broker, ten simulated lockers."""
    home = tmp_path_factory.mktemp("serve")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVENIQ_")}
    env |= {
        "PROVENIQ_HOME": str(home),
        "PROVENIQ_PORT": str(port),
        "PROVENIQ_DATABASE_URL": module_database_url,
        "PROVENIQ_WORKERS": "0",  # one process: the fuzzing needs no worker processes
    }
    log = home / "serve.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proveniq_core", "serve"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + READY_TIMEOUT
        while not any(line.startswith("Ctrl-C") for line in lines):
            assert time.monotonic() < deadline, f"serve not ready: {lines} {log.read_text()}"
            line = proc.stdout.readline()
            assert line or proc.poll() is None, f"serve exited: {lines} {log.read_text()}"
            lines.append(line.rstrip("\n"))
        key = next(line for line in lines if line.startswith("Admin API key:")).split()[-1]
        yield Served(f"http://127.0.0.1:{port}", key)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        finally:
            if proc.stdout is not None:
                proc.stdout.close()


def test_the_service_serves_the_fuzzed_schema(served: Served) -> None:
    """What is fuzzed below is exactly the document the running service publishes."""
    # Generous: the first request builds the document, which a loaded machine makes slow.
    assert httpx.get(f"{served.url}/openapi.json", timeout=60).json() == OPENAPI


@schema.parametrize()
def test_openapi_surface(case: Case[Any], served: Served) -> None:
    """Every operation, called with generated input and a key with all scopes, answers no 5xx
    and only what its schema declares."""
    case.call_and_validate(base_url=served.url, headers=served.auth)
