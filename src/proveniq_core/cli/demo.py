"""``proveniq demo``: registrations and every failure path, against a running service."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from proveniq_core.cli.connect import service
from proveniq_core.cli.options import ApiKey, DatabaseUrl, Home, Url, home_dir
from proveniq_core.cli.render import CliError, out


def demo(
    url: Url = None,
    api_key: ApiKey = None,
    home: Home = None,
    count: Annotated[
        int,
        typer.Option(
            envvar="PROVENIQ_DEMO_COUNT", metavar="N", min=1, max=50, help="Assets to register."
        ),
    ] = 3,
    wait: Annotated[
        float,
        typer.Option(
            envvar="PROVENIQ_DEMO_WAIT",
            metavar="SECONDS",
            help="How long to wait for each verification.",
        ),
    ] = 30.0,
    failures: Annotated[
        bool,
        typer.Option(
            envvar="PROVENIQ_DEMO_FAILURES",
            help="Then show each failure path: a late locker (202), a hardware fault (502 and "
            "an operator retry) and a database outage (503), each until it recovers.",
        ),
    ] = True,
    database_url: DatabaseUrl = None,
) -> None:
    """Register a few assets against a running service and print their timelines.

    The failure paths run only against a service that simulates its lockers (the embedded
    default does), never against real ones. The database outage also needs the service's
    database (--database-url, or the embedded PostgreSQL under --home, never created
    here), which the demo closes to new connections for a few seconds.

    Through the running service's HTTP API (--url, --api-key; see 'proveniq --help').
    """
    import httpx

    from proveniq_core.demo import run_demo, run_failures

    target = service(url, api_key, home)
    try:
        code = run_demo(target.url, target.key, count=count, wait=wait, console=out)
        if failures:
            with _database(home, database_url) as conninfo:
                code |= run_failures(
                    target.url, target.key, database_url=conninfo, wait=wait, console=out
                )
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach the service at {target.url}: {exc}") from None
    raise typer.Exit(code)


@contextlib.contextmanager
def _database(home: Path | None, database_url: str | None) -> Iterator[str | None]:
    """The service's database: ``--database-url``, else the embedded one under ``--home``
    if a service created it (adopted while the demo runs), else None."""
    if database_url:
        yield database_url
        return
    from proveniq_core.embedded import EmbeddedError, EmbeddedPostgres

    pg = EmbeddedPostgres(home_dir(home))
    try:
        conninfo = pg.start(create=False)
    except EmbeddedError:
        yield None  # no database to take down: run_failures says so and skips that path
        return
    try:
        yield conninfo
    finally:
        pg.stop()
