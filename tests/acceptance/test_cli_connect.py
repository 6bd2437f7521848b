"""Where the real ``proveniq`` commands connect, and how they fail when there is nothing there:
the service's URL follows ``PROVENIQ_PORT``; no command but ``serve`` and ``migrate`` ever
creates a database; each failure is one line naming where the command looked."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from proveniq_core.embedded import free_port


def proveniq(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The real command, with no ``PROVENIQ_*`` variable but those given."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PROVENIQ_")}
    return subprocess.run(
        [sys.executable, "-m", "proveniq_core", *args],
        env=clean | {"COLUMNS": "200"} | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single line a failed command printed (stderr), after checking it is just that."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


class FakeService:
    """An HTTP server answering every GET with ``{"items": []}``, recording what it got."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []
        requests = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append((self.path, self.headers.get("Authorization")))
                body = json.dumps({"items": []}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]


@pytest.fixture
def fake_service() -> Iterator[FakeService]:
    fake = FakeService()
    thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A data dir holding nothing but a bootstrap key, as ``serve`` writes it."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "bootstrap-key").write_text("pk_boot_strap\n")
    return home


def test_the_default_url_follows_proveniq_port_and_host(
    fake_service: FakeService, home: Path
) -> None:
    """Without --url a command calls http://PROVENIQ_HOST:PROVENIQ_PORT (a wildcard host on
    loopback) with the bootstrap key under PROVENIQ_HOME, and --help shows that URL."""
    port = str(fake_service.port)
    listed = proveniq("circuits", "--json", PROVENIQ_PORT=port, PROVENIQ_HOME=str(home))
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == {"items": []}
    wildcard = proveniq(
        "dlq",
        "list",
        PROVENIQ_HOST="0.0.0.0",  # noqa: S104 (a listen address the CLI must call on loopback)
        PROVENIQ_PORT=port,
        PROVENIQ_HOME=str(home),
    )
    assert wildcard.returncode == 0, wildcard.stderr
    assert wildcard.stderr.strip() == "no entries match"
    assert [path.split("?")[0] for path, _ in fake_service.requests] == [
        "/api/ops/circuits",
        "/api/ops/retry-queue",
    ]
    assert {auth for _, auth in fake_service.requests} == {"Bearer pk_boot_strap"}
    shown = proveniq("dlq", "list", "--help", PROVENIQ_PORT=port)
    assert f"(now http://127.0.0.1:{port})" in " ".join(shown.stdout.split())


def test_a_service_command_names_the_url_it_could_not_reach(home: Path) -> None:
    """No service on the port: one line naming the URL, exit 1."""
    port = free_port()
    line = one_error_line(proveniq("dlq", "list", PROVENIQ_PORT=str(port), PROVENIQ_HOME=str(home)))
    assert line.startswith(f"error: cannot reach the service at http://127.0.0.1:{port}: ")
    assert "is 'proveniq serve' running?" in line


@pytest.mark.parametrize(
    "command",
    [("dlq", "list"), ("circuits",), ("assets", "cancel", "x"), ("demo", "--count", "1")],
)
def test_a_service_command_without_a_key_names_where_it_looked(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    """No --api-key and no bootstrap key: one line naming the file it looked for, exit 1."""
    line = one_error_line(proveniq(*command, PROVENIQ_HOME=str(tmp_path)))
    assert line.startswith("error: no API key: --api-key / PROVENIQ_API_KEY is unset")
    assert f"no bootstrap key at {tmp_path / 'bootstrap-key'}" in line


@pytest.mark.parametrize(
    "command",
    [
        ("sagas", "list"),
        ("sagas", "show", "00000000-0000-0000-0000-000000000000"),
        ("keys", "create", "--tenant", "acme"),
        ("keys", "list"),
        ("keys", "revoke", "abc"),
        ("audit", "verify"),
    ],
)
def test_a_database_command_never_creates_the_embedded_database(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    """With an empty PROVENIQ_HOME a database command fails in one line naming where it
    looked, and creates nothing there."""
    home = tmp_path / "empty"
    home.mkdir()
    line = one_error_line(proveniq(*command, PROVENIQ_HOME=str(home)))
    assert line.startswith(f"error: no database: no PostgreSQL data dir at {home / 'pg'} ")
    assert f"(looked under --home / PROVENIQ_HOME = {home})" in line
    assert list(home.iterdir()) == []


def test_a_database_command_refuses_an_unmigrated_database(pg_admin_url: str) -> None:
    """A reachable database without the schema is not migrated by sagas list: it says that
    migrate creates it, and the database stays empty."""
    name = "proveniq_cli_empty"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    url = make_conninfo(pg_admin_url, dbname=name)
    try:
        line = one_error_line(proveniq("sagas", "list", PROVENIQ_DATABASE_URL=url))
        assert line.startswith("error: no Proveniq schema in ")
        assert f"/{name}: 'proveniq migrate' creates it" in line
        with psycopg.connect(url) as conn:
            tables = conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
            ).fetchone()
        assert tables == (0,)
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_a_database_command_refuses_a_schema_behind_this_version(database_url: str) -> None:
    """A database missing a migration: one line naming the migration and 'proveniq migrate'."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        last = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        assert last is not None
        conn.execute("DELETE FROM schema_migrations WHERE version = %s", (last[0],))
    line = one_error_line(proveniq("keys", "list", PROVENIQ_DATABASE_URL=database_url))
    assert f"is behind this version (migrations {last[0]} not applied)" in line
    assert line.endswith("run 'proveniq migrate'")


def test_a_database_command_names_the_server_it_could_not_reach() -> None:
    """A --database-url nobody answers: one line naming host, port and database, exit 1."""
    port = free_port()
    url = f"postgresql://postgres:secret@127.0.0.1:{port}/proveniq"
    line = one_error_line(proveniq("audit", "verify", "--database-url", url))
    assert line.startswith(f"error: cannot connect to 127.0.0.1:{port}/proveniq: ")
    assert "secret" not in line


def postgres_in(pgdata: Path) -> list[int]:
    """Live processes working in ``pgdata``: a PostgreSQL server and its children."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")) == pgdata.resolve():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_database_command_starts_a_stopped_embedded_server_and_stops_it(tmp_path: Path) -> None:
    """With no service running, keys create starts the embedded PostgreSQL that exists under
    --home, writes the key, and stops the server again; once its proveniq database is gone,
    it says so in one line and does not create it."""
    from proveniq_core.embedded import EmbeddedPostgres

    home = tmp_path / "home"
    made = proveniq("migrate", PROVENIQ_HOME=str(home))
    assert made.returncode == 0, made.stderr
    assert not postgres_in(home / "pg")
    created = proveniq("keys", "create", "--tenant", "a", PROVENIQ_HOME=str(home))
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("pk_")
    assert not postgres_in(home / "pg")

    pg = EmbeddedPostgres(home)
    pg.start()
    try:
        with psycopg.connect(pg.admin_url, autocommit=True) as conn:
            conn.execute("DROP DATABASE proveniq WITH (FORCE)")
        line = one_error_line(proveniq("keys", "create", "--tenant", "a", PROVENIQ_HOME=str(home)))
        assert line.startswith(
            f"error: no database: no database 'proveniq' in the PostgreSQL at {home / 'pg'}"
        )
        with psycopg.connect(pg.admin_url, autocommit=True) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'proveniq'").fetchone()
        assert found is None
    finally:
        pg.stop()


def test_serve_and_migrate_name_the_database_they_could_not_reach(tmp_path: Path) -> None:
    """serve and migrate with a --database-url nobody answers: one line naming host, port and
    database (never the password), exit 1, no traceback."""
    url = f"postgresql://postgres:secret@127.0.0.1:{free_port()}/proveniq"
    for command in (("migrate",), ("serve", "--port", str(free_port()))):
        failed = proveniq(*command, PROVENIQ_DATABASE_URL=url, PROVENIQ_HOME=str(tmp_path))
        assert failed.returncode == 1, failed.stderr
        assert "Traceback" not in failed.stderr and "secret" not in failed.stderr
        last = failed.stderr.splitlines()[-1]
        assert last.startswith(f"error: cannot connect to 127.0.0.1:{url.split(':')[-1]}")
        assert [x for x in failed.stderr.splitlines() if x.startswith("error:")] == [last]


def test_serve_names_a_bad_setting_in_one_line(tmp_path: Path) -> None:
    """A PROVENIQ_* setting out of range: one line naming the variable, exit 2, nothing started."""
    failed = proveniq("serve", PROVENIQ_POOL_MAX="0", PROVENIQ_HOME=str(tmp_path / "home"))
    assert failed.returncode == 2
    assert failed.stderr.splitlines() == [
        "error: PROVENIQ_POOL_MAX: Input should be greater than or equal to 1"
    ]
    assert not (tmp_path / "home").exists()


def test_simulate_names_a_taken_faults_port(tmp_path: Path) -> None:
    """simulate --faults-port on a taken port: one line naming it, exit 1, before connecting."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        failed = proveniq(
            "simulate", "--faults-port", str(port), "--mqtt-url", "mqtt://127.0.0.1:1"
        )
    line = one_error_line(failed)
    assert line.startswith(f"error: cannot listen on 127.0.0.1:{port}: ")
