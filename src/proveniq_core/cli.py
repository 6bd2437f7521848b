"""The ``proveniq`` command line: serve, migrate, simulate, demo and operator tools.

Every flag can also be set through the ``PROVENIQ_*`` variable shown in ``--help``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import uvicorn
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from proveniq_core import cli_ops, db, logs
from proveniq_core.config import Settings, default_home
from proveniq_core.embedded import EmbeddedPostgres
from proveniq_core.saga.store import SAGA_STATUSES

app = typer.Typer(
    help="Proveniq Core: register physical assets across lockers, the ledger and Verify.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
audit_app = typer.Typer(help="Check the tamper-evident audit trail.", no_args_is_help=True)
sagas_app = typer.Typer(
    help="Inspect durable sagas: recent runs, and one saga's step-by-step timeline.",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
app.add_typer(sagas_app, name="sagas")
app.add_typer(cli_ops.dlq_app, name="dlq")
app.add_typer(cli_ops.assets_app, name="assets")
app.add_typer(cli_ops.lockers_app, name="lockers")
app.add_typer(cli_ops.circuits_app, name="circuits")

out = Console()
err = Console(stderr=True)

HomeOpt = Annotated[
    Path | None,
    typer.Option(
        "--home",
        envvar="PROVENIQ_HOME",
        help=f"Data dir: embedded database, evidence, bootstrap key. [default: {default_home()}]",
    ),
]
DbOpt = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="PROVENIQ_DATABASE_URL",
        help="PostgreSQL conninfo. Unset: the embedded server under --home.",
    ),
]
MqttOpt = Annotated[
    str | None,
    typer.Option(
        "--mqtt-url",
        envvar="PROVENIQ_MQTT_URL",
        help="MQTT broker, mqtt://host:port. Unset: an embedded broker on loopback.",
    ),
]


def _settings(**overrides: Any) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


@contextlib.asynccontextmanager
async def _database(settings: Settings) -> AsyncIterator[db.Pool]:
    """A pool on the configured database, or on the embedded one (started if needed)."""
    pg = None
    conninfo = settings.database_url
    if conninfo is None:
        settings.home.mkdir(parents=True, exist_ok=True)
        pg = EmbeddedPostgres(settings.home)
        conninfo = await asyncio.to_thread(pg.start)
    try:
        await db.migrate(conninfo)
        pool = await db.open_pool(conninfo, min_size=1, max_size=2)
        try:
            await pool.wait(timeout=10)
            yield pool
        finally:
            await pool.close()
    finally:
        if pg is not None:
            pg.stop()


def _run(coro: Any, *, loop: str = "asyncio") -> Any:
    try:
        if loop == "uvloop":
            import uvloop

            return uvloop.run(coro)
        return asyncio.run(coro)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@app.command()
def serve(
    home: HomeOpt = None,
    database_url: DbOpt = None,
    mqtt_url: MqttOpt = None,
    host: Annotated[
        str, typer.Option(envvar="PROVENIQ_HOST", help="Listen address.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="PROVENIQ_PORT", help="Listen port.")] = 8700,
    role: Annotated[
        str,
        typer.Option(
            envvar="PROVENIQ_ROLE",
            help="api, worker or all (api + workers). A worker serves only /metrics, "
            "/healthz and /readyz on --port.",
        ),
    ] = "all",
    sim_lockers: Annotated[
        int,
        typer.Option(
            envvar="PROVENIQ_SIM_LOCKERS", help="Simulated lockers (embedded broker only)."
        ),
    ] = 10,
    sim_profile: Annotated[
        str,
        typer.Option(
            envvar="PROVENIQ_SIM_PROFILE", help="Simulated latency: instant, seed or P50:P99 (ms)."
        ),
    ] = "instant",
    log_level: Annotated[str, typer.Option(envvar="PROVENIQ_LOG_LEVEL")] = "info",
    log_format: Annotated[
        str,
        typer.Option(
            envvar="PROVENIQ_LOG_FORMAT",
            help="json (one JSON line per event on stderr) or console.",
        ),
    ] = "json",
    event_loop: Annotated[
        str,
        typer.Option(
            envvar="PROVENIQ_EVENT_LOOP",
            help=(
                "asyncio (the standard library's, the default) or uvloop (libuv-based, a few"
                " per cent less CPU; under uvloop a lost broker connection was sometimes"
                " noticed only at the MQTT keepalive)."
            ),
        ),
    ] = "asyncio",
) -> None:
    """Run the HTTP API and the workers.

    With no configuration it starts an embedded PostgreSQL, an embedded MQTT broker and a
    fleet of simulated lockers, then prints the URL, an admin API key and a curl to try.
    """
    if role not in ("api", "worker", "all"):
        raise typer.BadParameter("must be api, worker or all", param_hint="--role")
    if log_format not in ("json", "console"):
        raise typer.BadParameter("must be json or console", param_hint="--log-format")
    if event_loop not in ("uvloop", "asyncio"):
        raise typer.BadParameter("must be uvloop or asyncio", param_hint="--event-loop")
    settings = _settings(
        home=home,
        database_url=database_url,
        mqtt_url=mqtt_url,
        host=host,
        port=port,
        role=role,
        sim_lockers=sim_lockers,
        sim_profile=sim_profile,
        log_level=log_level,
        log_json=log_format == "json",
    )
    logs.configure(settings.log_level, json=settings.log_json)
    _run(_serve(settings), loop=event_loop)


class _Server(uvicorn.Server):
    """uvicorn, with signals left to us: Ctrl-C stops the workers and embedded parts too."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def request_exit(self) -> None:
        if self.should_exit:  # a second Ctrl-C skips waiting for open connections
            self.force_exit = True
        self.should_exit = True


async def _serve(settings: Settings) -> None:
    from proveniq_core.api.app import create_app, create_worker_app
    from proveniq_core.service import running

    started = time.perf_counter()
    async with running(settings, progress=lambda m: err.print(f"[dim]· {m}[/dim]")) as core:
        worker = settings.role == "worker"
        config = uvicorn.Config(
            create_worker_app(core) if worker else create_app(core),
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            lifespan="off",
        )
        server = _Server(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, server.request_exit)
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():  # noqa: ASYNC110 (uvicorn has no started event)
            await asyncio.sleep(0.02)
        if task.done():
            await task
            raise typer.Exit(1)
        url = f"http://{settings.host}:{settings.port}"
        seconds = time.perf_counter() - started
        if worker:
            print(f"Proveniq Core worker ready in {seconds:.1f}s; metrics at {url}/metrics")
            print("Ctrl-C stops the worker.", flush=True)
        else:
            _banner(url, core.bootstrap_key, core, seconds)
        await task
    err.print("stopped cleanly")


def _banner(url: str, key: str | None, core: Any, seconds: float) -> None:
    ref = core.fleet.devices[0].ref if core.fleet else "locker-001"
    body = json.dumps({"name": "Test watch", "category": "watch", "lockerRef": ref})
    print(f"Proveniq Core ready at {url} in {seconds:.1f}s", flush=True)
    print(f"Admin API key: {key}", flush=True)
    print("Register an asset:", flush=True)
    print(
        f"  curl -s -X POST {url}/api/assets -H 'Authorization: Bearer {key}'"
        f" -H 'Content-Type: application/json' -d '{body}'",
        flush=True,
    )
    print("Ctrl-C stops the service.", flush=True)


@app.command()
def migrate(home: HomeOpt = None, database_url: DbOpt = None) -> None:
    """Apply pending schema migrations (safe to run from several processes at once)."""

    async def go() -> list[int]:
        settings = _settings(home=home, database_url=database_url)
        if settings.database_url:
            return await db.migrate(settings.database_url)
        async with _database(settings):
            return []

    applied = _run(go())
    out.print(f"applied: {applied}" if applied else "schema is up to date")


@app.command()
def simulate(
    mqtt_url: Annotated[
        str, typer.Option(envvar="PROVENIQ_MQTT_URL", help="Broker to connect the fleet to.")
    ] = "mqtt://127.0.0.1:1883",
    lockers: Annotated[int, typer.Option(envvar="PROVENIQ_SIM_LOCKERS", min=1, max=10000)] = 10,
    prefix: Annotated[str, typer.Option(envvar="PROVENIQ_SIM_PREFIX")] = "locker-",
    profile: Annotated[
        str,
        typer.Option(envvar="PROVENIQ_SIM_PROFILE", help="instant, seed or P50:P99 in ms."),
    ] = "seed",
    seed: Annotated[int | None, typer.Option(envvar="PROVENIQ_SIM_SEED")] = None,
    state_file: Annotated[
        Path | None,
        typer.Option(
            help="Write every locker's links and command counts here as JSON, as they change."
        ),
    ] = None,
    faults_port: Annotated[
        int | None,
        typer.Option(
            envvar="PROVENIQ_SIM_FAULTS_PORT",
            min=1,
            max=65535,
            help="Also serve fault injection (/sim/faults, no auth) on 127.0.0.1:PORT.",
        ),
    ] = None,
) -> None:
    """Run a fleet of virtual lockers against a broker until Ctrl-C.

    Inject faults by publishing JSON to MQTT proveniq/sim/control, e.g.
    {"lockerRef": "locker-003", "fault": "delay", "delayMs": 35000, "count": 1}, or over HTTP
    with --faults-port.
    """
    import socket

    from proveniq_core.locker.faults import FaultBook
    from proveniq_core.locker.simulator import LatencyProfile, fleet_specs, run_fleet

    try:
        prof = LatencyProfile.parse(profile)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--profile") from None
    logs.configure("warning")
    specs = fleet_specs(lockers, prefix)
    faults = FaultBook.seeded(seed)
    sock = None
    if faults_port is not None:
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.1", faults_port))
        except OSError as exc:
            sock.close()
            raise typer.BadParameter(str(exc), param_hint="--faults-port") from None

    @contextlib.asynccontextmanager
    async def fault_control() -> AsyncIterator[None]:
        """Serve ``/sim/faults`` on the bound socket, if any, while the fleet runs."""
        if sock is None:
            yield
            return
        from proveniq_core.api.sim import control_app

        config = uvicorn.Config(
            control_app(faults), log_config=None, access_log=False, lifespan="off"
        )
        server = _Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        err.print(f"fault injection: http://127.0.0.1:{faults_port}/sim/faults")
        try:
            yield
        finally:
            server.should_exit = True
            await task
            sock.close()

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        err.print(f"{lockers} lockers {specs[0].ref}…{specs[-1].ref} on {mqtt_url} ({profile})")
        async with fault_control():
            await run_fleet(
                mqtt_url, specs, prof, stop, seed=seed, state_file=state_file, faults=faults
            )

    _run(go())


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant id (created if new).")],
    scopes: Annotated[
        str, typer.Option(help="Comma-separated: assets:read,assets:write,ops:read,…")
    ] = "assets:read,assets:write",
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    home: HomeOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Create an API key and print it (it is shown only once)."""
    from proveniq_core.errors import CoreError
    from proveniq_core.ledger import keys

    wanted = [s.strip() for s in scopes.split(",") if s.strip()]

    async def go() -> str:
        async with _database(_settings(home=home, database_url=database_url)) as pool:
            return await keys.create_key(pool, tenant, wanted, name)

    try:
        token = _run(go())
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--scopes") from None
    except CoreError as exc:
        err.print(f"[red]error:[/red] {exc.message} {exc.details or ''}")
        raise typer.Exit(1) from None
    print(token)


@keys_app.command("list")
def keys_list(home: HomeOpt = None, database_url: DbOpt = None) -> None:
    """List API keys (ids, tenants, scopes; never secrets)."""

    async def go() -> list[db.Row]:
        async with (
            _database(_settings(home=home, database_url=database_url)) as pool,
            db.connection(pool) as conn,
        ):
            return await db.fetch_all(conn, "list_api_keys")

    table = Table("id", "tenant", "scopes", "name", "created", "revoked")
    for r in _run(go()):
        table.add_row(
            r["id"],
            r["tenant_id"],
            ",".join(r["scopes"]),
            r["name"],
            f"{r['created_at']:%Y-%m-%d %H:%M}",
            f"{r['revoked_at']:%Y-%m-%d %H:%M}" if r["revoked_at"] else "",
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str, home: HomeOpt = None, database_url: DbOpt = None) -> None:
    """Revoke an API key by id (the part between ``pk_`` and the second ``_``)."""
    from proveniq_core.ledger import keys

    async def go() -> bool:
        async with _database(_settings(home=home, database_url=database_url)) as pool:
            return await keys.revoke_key(pool, key_id)

    if not _run(go()):
        err.print(f"no active key {key_id!r}")
        raise typer.Exit(1)
    out.print(f"revoked {key_id}")


@audit_app.command("verify")
def audit_verify(home: HomeOpt = None, database_url: DbOpt = None) -> None:
    """Seal pending audit rows, recompute the hash chain and name the first broken row."""
    from proveniq_core.ledger import audit

    async def go() -> tuple[int, audit.ChainReport]:
        async with _database(_settings(home=home, database_url=database_url)) as pool:
            sealed = await audit.seal(pool)
            return sealed, await audit.verify(pool)

    sealed, report = _run(go())
    if report.ok:
        out.print(f"audit chain intact: {report.checked} rows verified ({sealed} newly sealed)")
        return
    err.print(
        f"[red]audit chain BROKEN[/red] at row id={report.broken_id} seq={report.broken_seq}: "
        f"{report.reason} ({report.checked} rows verified before it)"
    )
    raise typer.Exit(2)


JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print JSON (the ops API's shape) instead of a table.")
]

_STATUS_STYLE = {
    "completed": "green",
    "running": "cyan",
    "compensating": "yellow",
    "deferred": "yellow",
    "interrupted": "yellow",
    "compensated": "red",
    "failed": "red",
    "compensation_failed": "bold red",
}


def _status(status: str | None) -> Text:
    return Text(status or "–", style=_STATUS_STYLE.get(status or "", ""))


def _when(at: datetime | None) -> str:
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z" if at else "–"


def _clock(at: datetime | None) -> str:
    return f"{at.astimezone(UTC):%H:%M:%S.%f}"[:-3] if at else "–"


def _duration(ms: float | None) -> str:
    if ms is None:
        return "–"
    if ms < 1000:
        return f"{ms:.1f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s"
    return f"{int(ms // 60_000)}m{ms % 60_000 / 1000:04.1f}s"


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


@sagas_app.command("list")
def sagas_list(
    status: Annotated[
        str | None,
        typer.Option(help=f"Only sagas in this status: {', '.join(SAGA_STATUSES)}."),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Only sagas of this kind, e.g. asset_registration.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many, newest first.")] = 20,
    json_out: JsonOpt = False,
    home: HomeOpt = None,
    database_url: DbOpt = None,
) -> None:
    """List recent sagas of every tenant, newest first, with where each one stands.

    "step" is the step running now, or the last one recorded; "error" is the
    failure code that stopped or compensated the saga. Times are UTC.
    See one saga in full with: proveniq sagas show ID
    """
    from proveniq_core.api.models import saga_summary

    if status is not None and status not in SAGA_STATUSES:
        raise typer.BadParameter(
            f"{status!r} is not one of {', '.join(SAGA_STATUSES)}", param_hint="--status"
        )

    async def go() -> list[db.Row]:
        async with (
            _database(_settings(home=home, database_url=database_url)) as pool,
            db.connection(pool) as conn,
        ):
            return await db.fetch_all(
                conn,
                "list_sagas",
                {
                    "tenant_id": None,
                    "status": status,
                    "name": name,
                    "before_at": None,
                    "before_id": None,
                    "limit": limit + 1,
                },
            )

    rows = _run(go())
    more = len(rows) > limit
    rows = rows[:limit]
    if json_out:
        _print_json([saga_summary(r).model_dump(mode="json") for r in rows])
        return
    if not rows:
        err.print("no sagas match")
        return
    table = Table(
        "id",
        "name",
        "status",
        "step",
        "owner",
        "created",
        "duration",
        "error",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    # On a narrow terminal the other columns give way: the whole id (to paste into
    # 'sagas show'), the status and the error code are what an operator looks for.
    for i in (0, 2, 7):
        table.columns[i].no_wrap = True
    for row in rows:
        s = saga_summary(row)
        table.add_row(
            Text(s.sagaId),
            Text(s.name),
            _status(s.status),
            Text(s.lastStep or "–"),
            Text(s.owner or "–"),
            _when(s.createdAt),
            _duration(s.durationMs),
            Text(s.errorCode or ""),
        )
    out.print(table)
    if more:
        err.print(f"[dim]the {limit} newest shown; --limit shows more[/dim]")


@sagas_app.command("show")
def sagas_show(
    saga_id: Annotated[
        str, typer.Argument(help="The saga's id, from 'sagas list' or an asset's sagaId.")
    ],
    json_out: JsonOpt = False,
    home: HomeOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Show one saga: its state, lease and error, then every step attempt in order.

    The timeline has one row per attempt of a step or of its compensation: the
    process that ran it, its outcome (completed, failed, interrupted when its
    owner died, deferred when parked on a timer), its duration and error code.
    Times are UTC. An unknown id exits with status 1.
    """
    from proveniq_core.api.models import saga_view
    from proveniq_core.saga import store

    async def go() -> tuple[db.Row, list[db.Row]] | None:
        async with (
            _database(_settings(home=home, database_url=database_url)) as pool,
            db.connection(pool) as conn,
        ):
            return await store.load(conn, saga_id)

    try:
        uuid.UUID(saga_id)
    except ValueError:
        found = None
    else:
        found = _run(go())
    if found is None:
        err.print(Text(f"no saga {saga_id!r}"))
        raise typer.Exit(1)
    saga, steps = found
    view = saga_view(saga, steps)
    if json_out:
        _print_json(view.model_dump(mode="json"))
        return

    error = view.error or {}
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("saga", Text(f"{view.sagaId}  {view.name}"))
    head.add_row("status", _status(view.status))
    head.add_row("tenant", Text(saga["tenant_id"] or "–"))
    head.add_row("owner", Text(f"{view.owner or '–'} (epoch {view.epoch})"))
    head.add_row("lease until", _when(view.leaseUntil))
    due = _when(view.runAt) if view.runAt else "held until woken (operator or device online)"
    wait_ms = (view.runAt - datetime.now(UTC)).total_seconds() * 1000 if view.runAt else 0
    if view.finishedAt is None and wait_ms > 0:
        due += f" (due in {_duration(wait_ms)})"
    head.add_row("run at", due)
    head.add_row("created", _when(view.createdAt))
    finished = _when(view.finishedAt)
    if view.finishedAt:
        finished += f" (took {_duration(view.durationMs)})"
    head.add_row("finished", finished)
    head.add_row("compensation rounds", str(view.compensationRounds))
    head.add_row(
        "error",
        Text(
            f"{error.get('code')} ({error.get('type')}): {error.get('message')}" if error else "–",
            style="red" if error else "",
        ),
    )
    out.print(head)
    out.print()
    if not view.steps:
        out.print("no step has started yet")
        return

    table = Table(
        "#",
        "step",
        "phase",
        "attempt",
        "status",
        "owner",
        "started",
        "finished",
        "ms",
        "error",
        title="step timeline (UTC)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for i in (1, 2, 4, 9):  # step, phase, status and error code stay whole
        table.columns[i].no_wrap = True
    for s in view.steps:
        table.add_row(
            str(s.stepIndex),
            Text(s.step),
            Text(s.phase, style="magenta" if s.phase == "compensate" else ""),
            str(s.attempt),
            _status(s.status),
            Text(s.owner or "–"),
            _clock(s.startedAt),
            _clock(s.finishedAt),
            f"{s.durationMs:.1f}" if s.durationMs is not None else "–",
            Text(s.errorCode or ""),
        )
    out.print(table)


@app.command()
def demo(
    url: Annotated[str, typer.Option(envvar="PROVENIQ_URL", help="A running service.")] = (
        "http://127.0.0.1:8700"
    ),
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="PROVENIQ_API_KEY",
            help="Admin key. Unset: the bootstrap key under --home.",
        ),
    ] = None,
    home: HomeOpt = None,
    count: Annotated[int, typer.Option(min=1, max=50, help="Assets to register.")] = 3,
    wait: Annotated[float, typer.Option(help="Seconds to wait for each verification.")] = 30.0,
    failures: Annotated[
        bool,
        typer.Option(
            help="Then show each failure path: a late locker (202), a hardware fault (502 and "
            "an operator retry) and a database outage (503), each until it recovers."
        ),
    ] = True,
    database_url: DbOpt = None,
) -> None:
    """Register a few assets against a running service and print their timelines.

    The failure paths run only against a service that simulates its lockers (the
    embedded default does), never against real ones; the database outage also needs the
    service's database (--database-url, or the embedded server under --home), which the
    demo closes to new connections for a few seconds.
    """
    from proveniq_core.demo import run_demo, run_failures

    key = api_key
    if key is None:
        path = (home or Path(os.environ.get("PROVENIQ_HOME", default_home()))) / "bootstrap-key"
        if not path.exists():
            raise typer.BadParameter(
                f"no --api-key and no bootstrap key at {path}", param_hint="--api-key"
            )
        key = path.read_text().strip()
    try:
        code = run_demo(url, key, count=count, wait=wait, console=out)
        if failures:
            conninfo = database_url or _embedded_conninfo(home)
            code |= run_failures(url, key, database_url=conninfo, wait=wait, console=out)
    except httpx.HTTPError as exc:
        err.print(f"[red]cannot reach {url}:[/red] {exc}")
        raise typer.Exit(1) from None
    raise typer.Exit(code)


def _embedded_conninfo(home: Path | None) -> str | None:
    """The conninfo of the embedded database under ``home``, if a service started it."""
    settings = _settings(home=home)
    if not (settings.home / "pg").exists():
        return None
    return EmbeddedPostgres(settings.home).start()  # adopts the running server


def main(argv: list[str] | None = None) -> None:
    app(args=argv if argv is not None else sys.argv[1:], prog_name="proveniq")
