"""``proveniq serve`` and ``proveniq migrate``: the two commands that may create a database."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shlex
import signal
import socket
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer
import uvicorn
from rich.text import Text

from proveniq_core.cli.connect import run, where
from proveniq_core.cli.options import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    DatabaseUrl,
    EventLoop,
    Home,
    LogFormat,
    LogLevel,
    MqttUrl,
    Role,
    choices,
    home_dir,
    service_url,
)
from proveniq_core.cli.render import CliError, err, out, progress

if TYPE_CHECKING:
    from proveniq_core.config import Settings
    from proveniq_core.service import Core


def settings(**overrides: Any) -> Settings:
    """Settings from the flags given (the rest from ``PROVENIQ_*``); a bad one in one line."""
    import pydantic
    import pydantic_settings

    from proveniq_core.config import Settings

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except pydantic.ValidationError as exc:
        problem = exc.errors()[0]
        name, *inside = problem["loc"]  # a list's item: PROVENIQ_X[2]
        where = "".join(f"[{part}]" for part in inside)
        raise CliError(f"PROVENIQ_{str(name).upper()}{where}: {problem['msg']}", code=2) from None
    except pydantic_settings.SettingsError as exc:  # a list setting's variable is not JSON
        found = re.search(r'field "(\w+)"', str(exc))
        name = found.group(1).upper() if found else "*"
        raise CliError(f"PROVENIQ_{name}: not a JSON value", code=2) from None


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything starts: a taken port fails at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CliError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} (another 'proveniq serve'?"
            " --port / PROVENIQ_PORT chooses another port); nothing was started"
        ) from None
    sock.set_inheritable(True)
    return sock


class QuietServer(uvicorn.Server):
    """uvicorn, with signals left to us: Ctrl-C stops the workers and embedded parts too."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def request_exit(self) -> None:
        if self.should_exit:  # a second Ctrl-C skips waiting for open connections
            self.force_exit = True
        self.should_exit = True


def serve(
    home: Home = None,
    database_url: DatabaseUrl = None,
    mqtt_url: MqttUrl = None,
    host: Annotated[
        str, typer.Option(envvar="PROVENIQ_HOST", metavar="ADDRESS", help="Listen address.")
    ] = DEFAULT_HOST,
    port: Annotated[
        int,
        typer.Option(
            envvar="PROVENIQ_PORT",
            metavar="PORT",
            min=0,
            max=65535,
            help="Listen port (0: any free one). Taken: serve exits before starting anything.",
        ),
    ] = DEFAULT_PORT,
    role: Annotated[
        Role,
        typer.Option(
            envvar="PROVENIQ_ROLE",
            metavar=choices(Role),
            case_sensitive=False,
            help="all: the API and the workers. api: the API only. worker: the workers only,"
            " serving just /metrics, /healthz and /readyz on --port.",
        ),
    ] = Role.ALL,
    sim_lockers: Annotated[
        int,
        typer.Option(
            envvar="PROVENIQ_SIM_LOCKERS",
            metavar="N",
            min=0,
            max=1000,
            help="Simulated lockers (with the embedded broker only).",
        ),
    ] = 10,
    sim_profile: Annotated[
        str,
        typer.Option(
            envvar="PROVENIQ_SIM_PROFILE",
            metavar="PROFILE",
            help="Simulated latency: instant, seed or P50:P99 (ms).",
        ),
    ] = "instant",
    log_level: Annotated[
        LogLevel,
        typer.Option(
            envvar="PROVENIQ_LOG_LEVEL",
            metavar=choices(LogLevel),
            case_sensitive=False,
            help="The least severe log lines written.",
        ),
    ] = LogLevel.INFO,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            envvar="PROVENIQ_LOG_FORMAT",
            metavar=choices(LogFormat),
            case_sensitive=False,
            help="json: one JSON line per event on stderr. console: coloured lines for people.",
        ),
    ] = LogFormat.JSON,
    event_loop: Annotated[
        EventLoop,
        typer.Option(
            envvar="PROVENIQ_EVENT_LOOP",
            metavar=choices(EventLoop),
            case_sensitive=False,
            help="asyncio: the standard library's. uvloop: libuv-based, a few per cent less"
            " CPU; under it a lost broker connection was sometimes noticed only at the MQTT"
            " keepalive.",
        ),
    ] = EventLoop.ASYNCIO,
) -> None:
    """Run the HTTP API and the workers.

    With no configuration it starts an embedded PostgreSQL (created under --home on first
    start), an embedded MQTT broker and a fleet of simulated lockers, then prints the URL
    and a curl to try. The admin API key is printed once, when it is created; later starts
    print the file that keeps it.
    """
    from proveniq_core import logs
    from proveniq_core.observability import tracing

    config = settings(
        home=home,
        database_url=database_url,
        mqtt_url=mqtt_url,
        host=host,
        port=port,
        role=role.value,
        sim_lockers=sim_lockers,
        sim_profile=sim_profile,
        log_level=log_level.value,
        log_json=log_format is LogFormat.JSON,
    )
    sock = listen(config.host, config.port)
    try:
        logs.configure(config.log_level, json=config.log_json)
        tracing.configure()
        run(_serve(config, sock), loop=event_loop.value)
    finally:
        tracing.shutdown()  # exports the spans still batched
        sock.close()


async def _serve(config: Settings, sock: socket.socket) -> None:
    import psycopg

    from proveniq_core.api.app import create_app, create_worker_app
    from proveniq_core.api.limits import server_config
    from proveniq_core.embedded import EmbeddedError
    from proveniq_core.service import running

    started = time.perf_counter()
    try:
        async with running(
            config, progress=lambda m: err.print(Text(f"· {m}", style="dim"))
        ) as core:
            worker = config.role == "worker"
            server = QuietServer(
                server_config(
                    create_worker_app(core) if worker else create_app(core),
                    config,
                    log_config=None,
                    access_log=False,
                    lifespan="off",
                )
            )
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, server.request_exit)
            task = asyncio.create_task(server.serve(sockets=[sock]))
            # uvicorn has no started event
            while not server.started and not task.done():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            if task.done():
                await task
                raise CliError("the HTTP server stopped while starting")
            url = service_url(config.host, sock.getsockname()[1])
            seconds = time.perf_counter() - started
            if worker:
                print(f"Proveniq Core worker ready in {seconds:.1f}s; metrics at {url}/metrics")
                if core.bootstrap is not None and core.bootstrap.created:
                    print(f"Admin API key: {core.bootstrap.token}")
                    print(f"  (printed this once; kept in {core.bootstrap.path})")
                print("Ctrl-C stops the worker.", flush=True)
            else:
                banner(url, core, seconds)
            await task
    except EmbeddedError as exc:
        raise CliError(str(exc)) from None
    except psycopg.OperationalError as exc:
        place = where(config.database_url) if config.database_url else "the database"
        raise CliError(f"cannot connect to {place}: {str(exc).strip().splitlines()[0]}") from None
    err.print("stopped cleanly")


def banner(url: str, core: Core, seconds: float) -> None:
    """What a newcomer needs: the URL, the admin key (only when it was just created, else
    where it is kept) and a curl that registers an asset with it."""
    ref = core.fleet.devices[0].ref if core.fleet else "locker-001"
    body = json.dumps({"name": "Test watch", "category": "watch", "lockerRef": ref})
    key = core.bootstrap
    print(f"Proveniq Core ready at {url} in {seconds:.1f}s")
    if key is None:
        auth = "'Authorization: Bearer KEY'"
    elif key.created:
        print(f"Admin API key: {key.token}")
        print(f"  (printed this once; kept in {key.path}, which later starts name instead)")
        auth = f"'Authorization: Bearer {key.token}'"
    else:
        print(f"Admin API key: kept in {key.path} (printed once, when it was created)")
        auth = f'"Authorization: Bearer $(cat {shlex.quote(str(key.path))})"'
    print("Register an asset:")
    print(
        f"  curl -s -X POST {url}/api/assets -H {auth}"
        f" -H 'Content-Type: application/json' -d '{body}'"
    )
    print("Ctrl-C stops the service.", flush=True)


def migrate(home: Home = None, database_url: DatabaseUrl = None) -> None:
    """Apply pending schema migrations (safe to run from several processes at once).

    With no --database-url it creates the embedded PostgreSQL under --home if there is none.
    """
    import psycopg

    from proveniq_core import db, logs
    from proveniq_core.embedded import EmbeddedError, EmbeddedPostgres

    logs.configure("warning")  # what was applied is printed below

    async def go() -> list[int]:
        if database_url:
            with progress("applying migrations"):
                return await db.migrate(database_url)
        pg = EmbeddedPostgres(home_dir(home))
        pg.pgdata.parent.mkdir(parents=True, exist_ok=True)
        with progress(f"starting the embedded PostgreSQL in {pg.pgdata}"):
            conninfo = await asyncio.to_thread(pg.start)
        try:
            with progress("applying migrations"):
                return await db.migrate(conninfo)
        finally:
            pg.stop()

    try:
        applied = run(go())
    except EmbeddedError as exc:
        raise CliError(str(exc)) from None
    except psycopg.OperationalError as exc:
        place = where(database_url) if database_url else "the embedded PostgreSQL"
        raise CliError(f"cannot connect to {place}: {str(exc).strip().splitlines()[0]}") from None
    out.print(f"applied: {applied}" if applied else "schema is up to date")
