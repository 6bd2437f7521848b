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
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import uvicorn
from rich.console import Console
from rich.table import Table

from proveniq_core import db, logs
from proveniq_core.config import Settings, default_home
from proveniq_core.embedded import EmbeddedPostgres

app = typer.Typer(
    help="Proveniq Core: register physical assets across lockers, the ledger and Verify.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
audit_app = typer.Typer(help="Check the tamper-evident audit trail.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")

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


def _run(coro: Any) -> Any:
    try:
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
        typer.Option(envvar="PROVENIQ_ROLE", help="api, worker or all (api + workers)."),
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
) -> None:
    """Run the HTTP API and the workers.

    With no configuration it starts an embedded PostgreSQL, an embedded MQTT broker and a
    fleet of simulated lockers, then prints the URL, an admin API key and a curl to try.
    """
    if role not in ("api", "worker", "all"):
        raise typer.BadParameter("must be api, worker or all", param_hint="--role")
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
    )
    logs.configure(settings.log_level)
    _run(_serve(settings))


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
    from proveniq_core.api.app import create_app
    from proveniq_core.service import running

    started = time.perf_counter()
    async with running(settings, progress=lambda m: err.print(f"[dim]· {m}[/dim]")) as core:
        if settings.role == "worker":
            err.print(f"worker ready in {time.perf_counter() - started:.1f}s; Ctrl-C stops it")
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
            return
        config = uvicorn.Config(
            create_app(core),
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
        _banner(url, core.bootstrap_key, core, time.perf_counter() - started)
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
) -> None:
    """Run a fleet of virtual lockers against a broker until Ctrl-C."""
    from proveniq_core.locker.simulator import LatencyProfile, fleet_specs, run_fleet

    try:
        prof = LatencyProfile.parse(profile)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--profile") from None
    logs.configure("warning")
    specs = fleet_specs(lockers, prefix)

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        err.print(f"{lockers} lockers {specs[0].ref}…{specs[-1].ref} on {mqtt_url} ({profile})")
        await run_fleet(mqtt_url, specs, prof, stop, seed=seed, state_file=state_file)

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

    async def go() -> int:
        async with (
            _database(_settings(home=home, database_url=database_url)) as pool,
            db.connection(pool) as conn,
        ):
            return await db.execute(conn, "revoke_api_key", {"id": key_id})

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
) -> None:
    """Register a few assets against a running service and print their timelines."""
    from proveniq_core.demo import run_demo

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
    except httpx.HTTPError as exc:
        err.print(f"[red]cannot reach {url}:[/red] {exc}")
        raise typer.Exit(1) from None
    raise typer.Exit(code)


def main(argv: list[str] | None = None) -> None:
    app(args=argv if argv is not None else sys.argv[1:], prog_name="proveniq")
