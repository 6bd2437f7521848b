"""``proveniq simulate``: a fleet of virtual lockers on an MQTT broker."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

import typer
import uvicorn

from proveniq_core.cli.connect import run
from proveniq_core.cli.render import CliError, err
from proveniq_core.cli.serve import QuietServer


def simulate(
    mqtt_url: Annotated[
        str,
        typer.Option(
            envvar="PROVENIQ_MQTT_URL", metavar="URL", help="Broker to connect the fleet to."
        ),
    ] = "mqtt://127.0.0.1:1883",
    lockers: Annotated[
        int,
        typer.Option(
            envvar="PROVENIQ_SIM_LOCKERS", metavar="N", min=1, max=10000, help="Fleet size."
        ),
    ] = 10,
    prefix: Annotated[
        str,
        typer.Option(
            envvar="PROVENIQ_SIM_PREFIX",
            metavar="TEXT",
            help="Locker refs are PREFIX001, PREFIX002, …",
        ),
    ] = "locker-",
    profile: Annotated[
        str,
        typer.Option(
            envvar="PROVENIQ_SIM_PROFILE",
            metavar="PROFILE",
            help="Latency: instant, seed or P50:P99 in ms.",
        ),
    ] = "seed",
    seed: Annotated[
        int | None,
        typer.Option(
            envvar="PROVENIQ_SIM_SEED", metavar="N", help="Random seed, for a repeatable run."
        ),
    ] = None,
    state_file: Annotated[
        Path | None,
        typer.Option(
            envvar="PROVENIQ_SIM_STATE_FILE",
            metavar="FILE",
            help="Write every locker's links and command counts here as JSON, as they change.",
        ),
    ] = None,
    faults_port: Annotated[
        int | None,
        typer.Option(
            envvar="PROVENIQ_SIM_FAULTS_PORT",
            metavar="PORT",
            min=1,
            max=65535,
            help="Also serve fault injection (/sim/faults, no auth) on 127.0.0.1:PORT.",
        ),
    ] = None,
) -> None:
    """Run a fleet of virtual lockers against a broker until Ctrl-C.

    Inject faults by publishing JSON to the MQTT topic proveniq/sim/control, e.g.
    {"lockerRef": "locker-003", "fault": "delay", "delayMs": 35000, "count": 1}, or over
    HTTP with --faults-port.
    """
    from proveniq_core import logs
    from proveniq_core.config import mqtt_url_for_messages
    from proveniq_core.locker.faults import FaultBook
    from proveniq_core.locker.simulator import LatencyProfile, fleet_specs, run_fleet
    from proveniq_core.observability import tracing

    try:
        prof = LatencyProfile.parse(profile)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--profile") from None
    logs.configure("warning")
    tracing.configure()  # the devices' own spans, continuing Core's commands
    specs = fleet_specs(lockers, prefix)
    faults = FaultBook.seeded(seed)
    sock = None
    if faults_port is not None:
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.1", faults_port))
        except OSError as exc:
            sock.close()
            raise CliError(f"cannot listen on 127.0.0.1:{faults_port}: {exc.strerror}") from None

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
        server = QuietServer(config)
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
        shown = mqtt_url_for_messages(mqtt_url)
        err.print(f"{lockers} lockers {specs[0].ref}…{specs[-1].ref} on {shown} ({profile})")
        async with fault_control():
            await run_fleet(
                mqtt_url, specs, prof, stop, seed=seed, state_file=state_file, faults=faults
            )

    try:
        run(go())
    finally:
        tracing.shutdown()
