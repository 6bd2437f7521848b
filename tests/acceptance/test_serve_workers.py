"""``proveniq serve --workers N``: the serve process is the API and starts N ``serve --role
worker`` processes, restarts one that dies, stops them when it stops, and a worker whose
parent is gone stops by itself. Real processes: serve on its embedded default, or on this
machine's PostgreSQL and Mosquitto."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proveniq_core.embedded import free_port
from tests.acceptance.test_serve import Served, clean_env, postgres_in
from tests.helpers import until

WORKER_LINE = re.compile(r"^  worker (\d+): pid (\d+), (http://\S+)/metrics$")
WAIT_S = 60.0  # a bound on every wait, so a regression fails instead of hanging


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid = stat.rsplit(")", 1)[1].split()[:2]
    return state, int(ppid)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped yet has exited)."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def children(pid: int) -> set[int]:
    """The live processes whose parent is ``pid``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None and stat[1] == pid and stat[0] != "Z":
                found.add(int(entry.name))
    return found


def workers(served: Served) -> dict[int, tuple[int, str]]:
    """What the banner says of the workers: index -> (pid, base URL)."""
    return {int(m[1]): (int(m[2]), m[3]) for line in served.lines if (m := WORKER_LINE.match(line))}


def verified_count(url: str) -> float:
    """``core_verification_outcomes_total{outcome="verified"}`` on a process's /metrics."""
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == "core_verification_outcomes_total" and sample.labels == {
                "outcome": "verified"
            }:
                return sample.value
    return 0.0


def register_and_verify(base: str, key: str, name: str) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    body = {"name": name, "category": "watch", "lockerRef": "locker-001"}
    created = httpx.post(f"{base}/api/assets", json=body, headers=headers, timeout=30)
    assert created.status_code == 201, created.text
    url = f"{base}/api/assets/{created.json()['assetId']}"
    until(
        lambda: httpx.get(url, headers=headers).json()["status"] == "verified",
        f"{name} to be verified",
        within=WAIT_S,
    )


def readyz(base: str) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{base}/readyz").json()
    return answer


@pytest.mark.slow
def test_serve_workers_2_on_the_embedded_default(tmp_path: Path) -> None:
    """The banner names two worker processes, children of serve, that verify what the API
    registers; the broker's password reaches them, never their command line. A worker killed
    with -9 is started again on the same address and registrations go on; SIGTERM stops
    every worker (one that does not stop in time is killed), then the embedded PostgreSQL."""
    home = tmp_path / "home"
    port = free_port()
    served = Served(home, port, PROVENIQ_WORKERS="2")
    base = f"http://127.0.0.1:{port}"
    seen: set[int] = set()
    try:
        assert served.lines[0].startswith(f"Proveniq Core ready at {base}")
        assert "workers: 2 (set by --workers or PROVENIQ_WORKERS)" in served.lines
        assert served.lines[-1] == "Ctrl-C stops the service."
        started = workers(served)
        assert set(started) == {1, 2}, served.lines
        pids = {pid for pid, _ in started.values()}
        seen |= pids
        assert children(served.proc.pid) == pids
        password = (home / "mqtt-password").read_text().strip()
        for pid in pids:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert argv[argv.index(b"serve") :][:3] == [b"serve", b"--role", b"worker"]
            assert password.encode() not in b" ".join(argv)
        assert readyz(base)["checks"] == {
            "database": "ok",
            "migrations": "ok",
            "broker": "ok",
            "ledgerCircuit": "closed",
            "workers": "ok",
        }

        key = served.value("Admin API key:")
        register_and_verify(base, key, "Watch 1")
        # The API process verifies nothing: its workers did, each on its own /metrics.
        assert verified_count(base) == 0
        counts = {i: verified_count(url) for i, (_, url) in started.items()}
        assert sum(counts.values()) == 1

        killed, url = started[1]
        subprocess.run(["kill", "-9", str(killed)], check=True)
        gone = until(
            lambda: (r := readyz(base))["checks"]["workers"] == "1/2 up" and r,
            "readyz to see it gone",
        )
        assert gone["status"] == "degraded"
        until(lambda: readyz(base)["checks"]["workers"] == "ok", "the worker back", WAIT_S)
        [restarted] = children(served.proc.pid) - pids
        seen.add(restarted)
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}  # the same address
        exited = [
            json.loads(line)
            for line in served.stderr.splitlines()
            if line.startswith("{") and "_exited" in line
        ]
        assert [(e["event"], e["worker"], e["pid"], e["returncode"]) for e in exited] == [
            ("worker_process_exited", 1, killed, -9)
        ]
        assert exited[0]["restart_in_s"] > 0
        register_and_verify(base, key, "Watch 2")
        # The restarted worker counts from 0; worker 2 goes on from where it was.
        assert verified_count(url) + verified_count(started[2][1]) == counts[2] + 1

        stuck = started[2][0]
        subprocess.run(["kill", "-STOP", str(stuck)], check=True)  # SIGTERM cannot stop it
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=WAIT_S) == 0
        assert not alive(restarted) and not alive(stuck)
        assert '"event": "worker_process_killed"' in served.stderr
        until(lambda: not postgres_in(home / "pg"), "the embedded PostgreSQL to stop")
    finally:
        if served.proc.poll() is None:
            served.kill()
        elif served.proc.stdout is not None:
            served.proc.stdout.close()
        for pid in seen:
            if alive(pid):
                subprocess.run(["kill", "-9", str(pid)], check=False)


def test_workers_stop_by_themselves_when_serve_is_killed(
    tmp_path: Path, database_url: str, mqtt_url: str
) -> None:
    """kill -9 of serve, on this machine's PostgreSQL and broker (still up for the workers):
    its worker, on the port --worker-port names, sees its parent gone and stops."""
    worker_port = free_port()
    served = Served(
        tmp_path / "home",
        free_port(),
        PROVENIQ_WORKERS="1",
        PROVENIQ_WORKER_PORT=str(worker_port),
        PROVENIQ_DATABASE_URL=database_url,
        PROVENIQ_MQTT_URL=mqtt_url,
    )
    try:
        [(pid, url)] = workers(served).values()
        assert url == f"http://127.0.0.1:{worker_port}"
        assert httpx.get(f"{url}/readyz").status_code == 200
    finally:
        served.kill()
    until(lambda: not alive(pid), "the orphaned worker to exit", within=WAIT_S)
    assert '"event": "parent_gone"' in served.stderr


def test_serve_refuses_workers_beside_another_role(tmp_path: Path) -> None:
    """--workers with --role api (or worker) is a usage error, in one line."""
    failed = subprocess.run(
        [sys.executable, "-m", "proveniq_core", "serve", "--role", "api", "--workers", "2"],
        env=clean_env(PROVENIQ_HOME=str(tmp_path / "home"), PROVENIQ_PORT=str(free_port())),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert failed.returncode == 2
    assert failed.stderr.splitlines() == [
        "error: --workers / PROVENIQ_WORKERS starts worker processes beside the API: it needs"
        " --role all (the default), not --role api"
    ]
    assert not (tmp_path / "home").exists()


def test_serve_with_a_worker_port_taken_fails_before_starting_anything(tmp_path: Path) -> None:
    """A worker's port taken (--worker-port): one line naming it, exit 1, nothing started."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        failed = subprocess.run(
            [sys.executable, "-m", "proveniq_core", "serve", "--workers", "2"],
            env=clean_env(
                PROVENIQ_HOME=str(tmp_path / "home"),
                PROVENIQ_PORT=str(free_port()),
                PROVENIQ_WORKER_PORT=str(port),
            ),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert failed.returncode == 1
    assert failed.stderr.splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use (another"
        " 'proveniq serve'? --worker-port / PROVENIQ_WORKER_PORT chooses another port);"
        " nothing was started"
    ]
    assert not (tmp_path / "home" / "pg").exists()
