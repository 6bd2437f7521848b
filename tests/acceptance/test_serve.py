"""The real ``proveniq serve`` on its embedded default, driven over HTTP like a newcomer would."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from proveniq_core.embedded import free_port

READY_TIMEOUT = 60.0


class Served:
    """A ``proveniq serve`` subprocess and what it printed."""

    def __init__(self, home: Path, port: int, **settings: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROVENIQ_")}
        env |= {"PROVENIQ_HOME": str(home), "PROVENIQ_PORT": str(port)} | settings
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proveniq_core", "serve"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.lines: list[str] = []
        deadline = time.monotonic() + READY_TIMEOUT
        assert self.proc.stdout is not None
        while not any(line.startswith("Ctrl-C") for line in self.lines):
            assert time.monotonic() < deadline, f"serve not ready: {self.lines}"
            line = self.proc.stdout.readline()
            assert line or self.proc.poll() is None, f"serve exited: {self.lines}"
            self.lines.append(line.rstrip("\n"))

    def value(self, prefix: str) -> str:
        return next(line for line in self.lines if line.startswith(prefix)).split()[-1]

    @property
    def curl(self) -> str:
        return next(line.strip() for line in self.lines if line.strip().startswith("curl "))

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=30)
        finally:
            assert self.proc.stdout is not None
            self.proc.stdout.close()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_newcomer_gets_201_then_verified_and_data_survives_restart(home: Path) -> None:
    """serve prints a key and a curl; the curl gives 201; the asset verifies; a restart keeps it."""
    port = free_port()
    first = Served(home, port)
    try:
        assert first.lines[0].startswith(f"Proveniq Core ready at http://127.0.0.1:{port}")
        key = first.value("Admin API key:")
        assert key.startswith("pk_")
        curl = shutil.which("curl")
        assert curl, "the README's example uses curl"
        out = subprocess.run(shlex.split(first.curl), capture_output=True, text=True, check=True)
        created = json.loads(out.stdout)
        assert set(created) == {"assetId", "lockerId", "verificationId", "status"}
        assert created["status"] == "linked"
        headers = {"Authorization": f"Bearer {key}"}
        url = f"http://127.0.0.1:{port}/api/assets/{created['assetId']}"
        deadline = time.monotonic() + 20
        while (asset := httpx.get(url, headers=headers).json())["status"] != "verified":
            assert time.monotonic() < deadline, asset
            time.sleep(0.1)
    finally:
        assert first.stop() == 0

    second = Served(home, port)
    try:
        assert second.value("Admin API key:") == key  # created once, on first start
        again = httpx.get(url, headers=headers)
        assert again.status_code == 200
        assert again.json()["status"] == "verified"
        assert again.json()["verification"]["verificationId"] == created["verificationId"]
    finally:
        assert second.stop() == 0


def test_help_teaches_every_command() -> None:
    """``proveniq --help`` lists the commands, and serve's help names its env variables."""
    top = subprocess.run(
        [sys.executable, "-m", "proveniq_core", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for command in ("serve", "migrate", "simulate", "demo", "keys", "audit"):
        assert command in top
    serve = subprocess.run(
        [sys.executable, "-m", "proveniq_core", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "200"},
    ).stdout
    for var in ("PROVENIQ_HOME", "PROVENIQ_DATABASE_URL", "PROVENIQ_MQTT_URL", "PROVENIQ_PORT"):
        assert var in serve


@pytest.mark.slow
def test_demo_walks_every_failure_path_to_recovery(home: Path) -> None:
    """`proveniq demo` against the embedded default: a verified asset, then a late locker
    (202, linked by the late answer), a hardware fault (502, operator retry) and a real
    database outage (503 with Retry-After, then 201 again), each recovered: exit 0."""
    port = free_port()
    # The demo's webhook receiver listens on 127.0.0.1: a lab setup.
    served = Served(home, port, PROVENIQ_WEBHOOK_ALLOW_PRIVATE="true")
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROVENIQ_")}
        args = ["--url", f"http://127.0.0.1:{port}", "--home", str(home), "--count", "1"]
        demo = subprocess.run(
            [sys.executable, "-m", "proveniq_core", "demo", *args, "--wait", "30"],
            env=env | {"COLUMNS": "200"},
            capture_output=True,
            text=True,
            timeout=240,
        )
    finally:
        assert served.stop() == 0
    out = demo.stdout
    assert demo.returncode == 0, out + demo.stderr
    assert "1/1 assets registered and verified" in out
    received = out[out.index("webhooks received") : out.index("registered and verified")]
    for event in ("asset.created", "asset.linked", "verification.completed"):
        assert event in received
    assert received.count("valid") == 3 and "BAD" not in received
    assert "202 in" in out and "'reason': 'E_LOCKER_TIMEOUT'" in out
    assert "502 in" in out and "E_LOCKER_HARDWARE" in out
    assert "503 E_LEDGER_DOWN" in out and "Retry-After: 10" in out
    assert out.count("recovered:") == 3
    assert "failure paths: all recovered" in out
