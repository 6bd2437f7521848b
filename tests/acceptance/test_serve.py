"""The real ``proveniq serve`` on its embedded default, driven over HTTP like a newcomer would,
and started again after a crash."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from proveniq_core.cli import supervisor
from proveniq_core.embedded import free_port
from tests.helpers import until

READY_TIMEOUT = 60.0


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any ``PROVENIQ_*`` variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVENIQ_")}
    return env | extra


class Served:
    """A ``proveniq serve`` subprocess and what it printed (stderr goes to ``err_file``)."""

    def __init__(self, home: Path, port: int, **env: str) -> None:
        self.err_file = home.parent / f"serve-{port}-{time.monotonic_ns()}.err"
        with self.err_file.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "proveniq_core", "serve"],
                env=clean_env(PROVENIQ_HOME=str(home), PROVENIQ_PORT=str(port), **env),
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self.lines: list[str] = []
        try:
            self._wait_ready()
        except BaseException:
            self.kill()  # close the pipe too: a failed start must not leak it into later tests
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        assert self.proc.stdout is not None
        while not any(line.startswith("Ctrl-C") for line in self.lines):
            assert time.monotonic() < deadline, f"serve not ready: {self.lines} {self.stderr}"
            line = self.proc.stdout.readline()
            assert line or self.proc.poll() is None, f"serve exited: {self.lines} {self.stderr}"
            self.lines.append(line.rstrip("\n"))

    @property
    def stderr(self) -> str:
        return self.err_file.read_text()

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

    def kill(self) -> None:
        """kill -9, as a power cut would."""
        self.proc.kill()
        self.proc.wait(timeout=10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def serve_once(home: Path, port: int) -> subprocess.CompletedProcess[str]:
    """``proveniq serve`` expected to exit by itself (it could not start)."""
    return subprocess.run(
        [sys.executable, "-m", "proveniq_core", "serve"],
        env=clean_env(PROVENIQ_HOME=str(home), PROVENIQ_PORT=str(port)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def postgres_in(pgdata: Path) -> list[int]:
    """Live processes working in ``pgdata``: a PostgreSQL server and its children."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")) == pgdata.resolve():
                    found.append(int(entry.name))
            except OSError:
                continue  # gone meanwhile, or a zombie
    return found


def postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().splitlines()[0])


def write_pid(pgdata: Path, pid: int) -> None:
    """Put ``pid`` in the first line of ``postmaster.pid``, as a reboot would leave it."""
    pid_file = pgdata / "postmaster.pid"
    lines = pid_file.read_text().splitlines()
    pid_file.write_text("\n".join([str(pid), *lines[1:]]) + "\n")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_newcomer_gets_201_then_verified_and_data_survives_restart(home: Path) -> None:
    """serve prints a key and a curl; the curl gives 201; the asset verifies; a restart keeps
    it, and prints where the key is kept instead of the key, with a curl that still works."""
    port = free_port()
    first = Served(home, port)
    kept = home / "bootstrap-key"
    try:
        assert first.lines[0].startswith(f"Proveniq Core ready at http://127.0.0.1:{port}")
        key = first.value("Admin API key:")
        assert key.startswith("pk_")
        assert kept.read_text().strip() == key
        assert kept.stat().st_mode & 0o077 == 0, "readable by others"
        assert any(str(kept) in line for line in first.lines[2:3])
        # By default, one worker process per core beyond two (at most 3), named.
        n_cores = supervisor.cores()
        n = supervisor.default_workers(n_cores)
        s = "s" if n_cores != 1 else ""
        assert (
            f"workers: {n} (from {n_cores} core{s}; --workers N to change)"
            if n
            else f"workers: 0, in this process (from {n_cores} core{s}; --workers N to change)"
        ) in first.lines
        assert sum(line.startswith("  worker ") for line in first.lines) == n
        # The embedded broker's password stays in its file: the URL is printed masked.
        password = (home / "mqtt-password").read_text().strip()
        assert password not in "\n".join(first.lines) + first.stderr
        assert "· embedded MQTT broker on mqtt://proveniq:***@127.0.0.1:" in first.stderr
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
        assert key not in "\n".join(second.lines) + second.stderr  # printed once, at creation
        assert second.lines[1] == (
            f"Admin API key: kept in {kept} (printed once, when it was created)"
        )
        out = subprocess.run(["sh", "-c", second.curl], capture_output=True, text=True, check=True)
        assert json.loads(out.stdout)["status"] == "linked"
        again = httpx.get(url, headers=headers)
        assert again.status_code == 200
        assert again.json()["status"] == "verified"
        assert again.json()["verification"]["verificationId"] == created["verificationId"]
    finally:
        assert second.stop() == 0


def test_a_worker_prints_the_key_it_creates_and_only_then(home: Path) -> None:
    """serve --role worker on a new data dir creates the admin key and prints it once; the
    next start prints no key."""
    first = Served(home, free_port(), PROVENIQ_ROLE="worker")
    try:
        key = first.value("Admin API key:")
        assert key.startswith("pk_")
        assert (home / "bootstrap-key").read_text().strip() == key
    finally:
        assert first.stop() == 0
    second = Served(home, free_port(), PROVENIQ_ROLE="worker")
    try:
        assert second.lines[0].startswith("Proveniq Core worker ready")
        assert key not in "\n".join(second.lines) + second.stderr
        assert not any(line.startswith("Admin API key") for line in second.lines)
    finally:
        assert second.stop() == 0


def test_serve_starts_after_a_crash_left_a_live_pid_in_the_lock_file(home: Path) -> None:
    """kill -9 serve and its PostgreSQL, then let postmaster.pid name another live process
    (as after a reboot): serve recognises the stale lock, clears it, starts, keeps the data."""
    port = free_port()
    pgdata = home / "pg"
    first = Served(home, port, PROVENIQ_WORKERS="0")
    key = first.value("Admin API key:")
    headers = {"Authorization": f"Bearer {key}"}
    body = {"name": "Watch", "category": "watch", "lockerRef": "locker-001"}
    created = httpx.post(f"http://127.0.0.1:{port}/api/assets", json=body, headers=headers)
    assert created.status_code == 201, created.text
    postmaster = postmaster_pid(pgdata)
    first.kill()
    os.kill(postmaster, signal.SIGKILL)
    until(lambda: not postgres_in(pgdata), "the killed server's processes to exit")
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        write_pid(pgdata, sleeper.pid)
        second = Served(home, port, PROVENIQ_WORKERS="0")
        try:
            asset_id = created.json()["assetId"]
            again = httpx.get(f"http://127.0.0.1:{port}/api/assets/{asset_id}", headers=headers)
            assert again.status_code == 200, again.text
            assert postmaster_pid(pgdata) in postgres_in(pgdata)  # a new server, recorded
        finally:
            assert second.stop() == 0
        until(lambda: not postgres_in(pgdata), "the server to stop with serve")
    finally:
        sleeper.kill()
        sleeper.wait()


def test_serve_refuses_a_data_dir_a_postgres_still_uses(home: Path) -> None:
    """If a PostgreSQL still runs in the data dir while postmaster.pid names another live
    process, serve removes nothing (two servers would corrupt it) and says so in one line."""
    port = free_port()
    pgdata = home / "pg"
    first = Served(home, port, PROVENIQ_WORKERS="0")
    postmaster = postmaster_pid(pgdata)
    first.kill()  # its PostgreSQL lives on
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        write_pid(pgdata, sleeper.pid)
        refused = serve_once(home, port)
        assert refused.returncode == 1
        assert "Traceback" not in refused.stderr
        [line] = [x for x in refused.stderr.splitlines() if x.startswith("error:")]
        assert refused.stderr.rstrip().endswith(line)
        assert f"PostgreSQL process(es) {postmaster}" in line
        assert f"still use {pgdata}" in line
        assert (pgdata / "postmaster.pid").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
        write_pid(pgdata, postmaster)
        os.kill(postmaster, signal.SIGINT)  # fast shutdown
        until(lambda: not postgres_in(pgdata), "the left-over server to stop")


def test_serve_names_the_cause_and_the_log_when_postgres_cannot_start(home: Path) -> None:
    """A data dir PostgreSQL refuses to start (here: one of an unknown major version): serve
    exits 1 with one line naming the cause and the server's log, and no traceback."""
    made = subprocess.run(
        [sys.executable, "-m", "proveniq_core", "migrate"],
        env=clean_env(PROVENIQ_HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    (home / "pg" / "PG_VERSION").write_text("99\n")
    refused = serve_once(home, free_port())
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    [line] = [x for x in refused.stderr.splitlines() if x.startswith("error:")]
    assert refused.stderr.rstrip().endswith(line)
    assert line.startswith(f"error: PostgreSQL did not start in {home / 'pg'}: ")
    assert "database files are incompatible with server" in line
    assert line.endswith(f"its log: {home / 'pg' / 'log'}")


def test_serve_with_its_port_taken_fails_before_starting_anything(home: Path) -> None:
    """A taken port: one line naming it, exit 1, and no embedded PostgreSQL started."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = serve_once(home, port)
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use (another"
        " 'proveniq serve'? --port / PROVENIQ_PORT chooses another port); nothing was started"
    ]
    assert refused.stdout == ""
    assert not (home / "pg").exists()


@pytest.mark.parametrize(
    ("value", "line"),
    [
        ("[5, 0]", "PROVENIQ_WEBHOOK_RETRY_SCHEDULE[1]: Input should be greater than 0"),
        ("5 min", "PROVENIQ_WEBHOOK_RETRY_SCHEDULE: not a JSON value"),
    ],
)
def test_serve_names_a_bad_list_setting_and_starts_nothing(
    home: Path, value: str, line: str
) -> None:
    """A list setting that is not JSON, or has a bad item: one line naming the variable (and
    the item), exit 2, no embedded PostgreSQL started."""
    refused = subprocess.run(
        [sys.executable, "-m", "proveniq_core", "serve"],
        env=clean_env(
            PROVENIQ_HOME=str(home), PROVENIQ_PORT="0", PROVENIQ_WEBHOOK_RETRY_SCHEDULE=value
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [f"error: {line}"]
    assert not (home / "pg").exists()


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
    for var in (
        "PROVENIQ_HOME",
        "PROVENIQ_DATABASE_URL",
        "PROVENIQ_MQTT_URL",
        "PROVENIQ_PORT",
        "PROVENIQ_WORKERS",
        "PROVENIQ_WORKER_PORT",
    ):
        assert var in serve
    assert "--listen-fd" not in serve  # what serve tells its workers is not for people


@pytest.mark.slow
def test_demo_walks_every_failure_path_to_recovery(home: Path) -> None:
    """`proveniq demo` against the embedded default: a verified asset, then a late locker
    (202, linked by the late answer), a hardware fault (502, operator retry) and a real
    database outage (503 with Retry-After, then 201 again), each recovered: exit 0."""
    port = free_port()
    # The demo's webhook receiver listens on 127.0.0.1: a lab setup.
    served = Served(home, port, PROVENIQ_WEBHOOK_ALLOW_PRIVATE="true")
    try:
        env = clean_env()
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
