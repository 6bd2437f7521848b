"""``proveniq serve`` and ``proveniq migrate``: the two commands that may create a database."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
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
from proveniq_core.cli.supervisor import (
    DEFAULT_MAX,
    Worker,
    Workers,
    cores,
    default_workers,
    watch_parent,
)

WORKERS_READY_WAIT = 60.0
"""How long ``serve --workers N`` waits for its workers before printing the banner anyway."""

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


def listen(host: str, port: int, option: str = "--port / PROVENIQ_PORT") -> socket.socket:
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
            f" {option} chooses another port); nothing was started"
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
            help="all: the API and the workers (those in worker processes of their own with"
            " --workers N). api: the API only. worker: the workers only, serving just"
            " /metrics, /healthz and /readyz on --port.",
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
    workers: Annotated[
        int | None,
        typer.Option(
            envvar="PROVENIQ_WORKERS",
            metavar="N",
            min=0,
            max=64,
            show_default=False,
            help="With --role all: this process serves the API and starts N worker processes"
            " (serve --role worker), restarts one that dies and stops them when it stops;"
            " 0: one process runs everything. [default: one per core beyond two, at"
            f" most {DEFAULT_MAX}: {default_workers(cores())} here]",
        ),
    ] = None,
    worker_port: Annotated[
        int,
        typer.Option(
            envvar="PROVENIQ_WORKER_PORT",
            metavar="PORT",
            min=0,
            max=65535,
            help="With --workers: worker i serves /metrics, /healthz and /readyz on PORT+i-1"
            " (0: any free ports, printed at start; a restarted worker keeps its port).",
        ),
    ] = 0,
    listen_fd: Annotated[int | None, typer.Option(hidden=True)] = None,
    parent_pid: Annotated[int | None, typer.Option(hidden=True)] = None,
    worker_index: Annotated[int | None, typer.Option(hidden=True)] = None,
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
    import structlog

    from proveniq_core import logs
    from proveniq_core.observability import tracing

    if workers and role is not Role.ALL:
        raise CliError(
            f"--workers / PROVENIQ_WORKERS starts worker processes beside the API: it needs"
            f" --role all (the default), not --role {role.value}",
            code=2,
        )
    n_cores = cores()
    n = (default_workers(n_cores) if workers is None else workers) if role is Role.ALL else 0
    config = settings(
        home=home,
        database_url=database_url,
        mqtt_url=mqtt_url,
        host=host,
        port=port,
        role="api" if n else role.value,
        sim_lockers=sim_lockers,
        sim_profile=sim_profile,
        log_level=log_level.value,
        log_json=log_format is LogFormat.JSON,
    )
    if listen_fd is not None:  # a worker of 'serve --workers': its parent bound the socket
        sock = socket.socket(fileno=listen_fd)
    else:
        sock = listen(config.host, config.port)
    worker_socks: list[socket.socket] = []
    try:
        for i in range(n):
            worker_socks.append(
                listen(
                    config.host,
                    worker_port + i if worker_port else 0,
                    "--worker-port / PROVENIQ_WORKER_PORT",
                )
            )
    except CliError:
        for opened in (sock, *worker_socks):
            opened.close()
        raise
    if role is Role.ALL:
        how = (
            f"from {n_cores} core{'s' if n_cores != 1 else ''}; --workers N to change"
            if workers is None
            else "set by --workers or PROVENIQ_WORKERS"
        )
        plan: WorkerPlan | None = WorkerPlan(
            n, how, worker_socks, log_level, log_format, event_loop
        )
    else:
        plan = None
    try:
        logs.configure(config.log_level, json=config.log_json)
        if worker_index is not None:
            structlog.contextvars.bind_contextvars(worker=worker_index)
        if parent_pid is not None:
            watch_parent(parent_pid)
        tracing.configure()
        run(_serve(config, sock, plan, quiet=parent_pid is not None), loop=event_loop.value)
    finally:
        tracing.shutdown()  # exports the spans still batched
        sock.close()
        for opened in worker_socks:
            opened.close()


@dataclass
class WorkerPlan:
    """What ``serve`` with --role all starts beside the API: ``n`` worker processes (0: it
    runs the workers itself), why that many (for the banner), and what they inherit."""

    n: int
    how: str
    socks: list[socket.socket]
    log_level: LogLevel
    log_format: LogFormat
    event_loop: EventLoop

    def workers(self, config: Settings, core: Core) -> Workers:
        """The worker processes, on ``core``'s database and broker (the embedded ones' URLs
        too, with their credentials: in the environment, never on the command line)."""
        env = os.environ | {
            "PROVENIQ_DATABASE_URL": core.conninfo,
            "PROVENIQ_MQTT_URL": core.mqtt_url,
        }
        argv = Workers.argv_for(
            *("--home", str(config.home), "--host", config.host),
            *("--log-level", self.log_level.value, "--log-format", self.log_format.value),
            *("--event-loop", self.event_loop.value),
        )
        slots = [
            Worker(i + 1, sock, service_url(config.host, sock.getsockname()[1]))
            for i, sock in enumerate(self.socks)
        ]
        return Workers(argv, env, slots)

    def lines(self, workers: Workers | None) -> list[str]:
        """The banner's lines about the workers."""
        if workers is None:
            return [f"workers: 0, in this process ({self.how})"]
        lines = [f"workers: {self.n} ({self.how})"]
        for slot in workers.slots:
            state = "" if slot.ready else " (not ready yet)"
            lines.append(f"  worker {slot.index}: pid {slot.pid}, {slot.url}/metrics{state}")
        return lines


async def _serve(
    config: Settings, sock: socket.socket, plan: WorkerPlan | None, *, quiet: bool = False
) -> None:
    """Serve until SIGINT or SIGTERM. ``quiet``: a worker of ``serve --workers``, whose
    parent says what is started and stopped (the worker's log lines still go to stderr)."""
    import psycopg

    from proveniq_core.api.app import create_app, create_worker_app
    from proveniq_core.api.limits import server_config
    from proveniq_core.embedded import EmbeddedError
    from proveniq_core.service import running

    started = time.perf_counter()
    try:
        async with running(
            config,
            progress=(lambda _: None)
            if quiet
            else lambda m: err.print(Text(f"· {m}", style="dim")),
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
            workers = plan.workers(config, core) if plan is not None and plan.n else None

            def stop() -> None:
                server.request_exit()
                if workers is not None:
                    workers.stop()  # beside the HTTP server's stop

            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop)
            try:
                if workers is not None:
                    workers.start()
                    core.worker_processes = workers.status
                task = asyncio.create_task(server.serve(sockets=[sock]))
                # uvicorn has no started event
                while not server.started and not task.done():  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
                if task.done():
                    await task
                    raise CliError("the HTTP server stopped while starting")
                if workers is not None:
                    await workers.wait_ready(WORKERS_READY_WAIT)
                url = service_url(config.host, sock.getsockname()[1])
                seconds = time.perf_counter() - started
                if worker:
                    print(f"Proveniq Core worker ready in {seconds:.1f}s; metrics at {url}/metrics")
                    if core.bootstrap is not None and core.bootstrap.created:
                        print(f"Admin API key: {core.bootstrap.token}")
                        print(f"  (printed this once; kept in {core.bootstrap.path})")
                    print("Ctrl-C stops the worker.", flush=True)
                elif not server.should_exit:
                    banner(url, core, seconds, plan.lines(workers) if plan is not None else [])
                await task
            finally:
                if workers is not None:
                    await workers.stop()  # before the embedded parts they use stop
    except EmbeddedError as exc:
        raise CliError(str(exc)) from None
    except psycopg.OperationalError as exc:
        place = where(config.database_url) if config.database_url else "the database"
        raise CliError(f"cannot connect to {place}: {str(exc).strip().splitlines()[0]}") from None
    if not quiet:
        err.print("stopped cleanly")


def banner(url: str, core: Core, seconds: float, workers: list[str]) -> None:
    """What a newcomer needs: the URL, the admin key (only when it was just created, else
    where it is kept) and a curl that registers an asset with it; then ``workers``, the
    lines about the worker processes."""
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
    for line in workers:
        print(line)
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
