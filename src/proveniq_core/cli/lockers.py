"""``proveniq lockers``: locker operations, through the running service."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from proveniq_core.cli.connect import SERVICE, service
from proveniq_core.cli.options import ApiKey, Home, Json, Url, group
from proveniq_core.cli.render import out, print_json, when

app = group(
    short_help="Start or end a locker's maintenance (through the API).",
    help=f"Locker operations. {SERVICE}",
)


@app.command("maintenance")
def maintenance(
    locker_ref: Annotated[str, typer.Argument(metavar="REF", hidden=True)],
    until: Annotated[
        str | None,
        typer.Option(
            envvar="PROVENIQ_MAINTENANCE_UNTIL",
            metavar="TIME",
            help="ISO 8601 time with offset, e.g. 2026-12-01T18:00:00Z; at most 30 days ahead.",
        ),
    ] = None,
    end: Annotated[
        bool, typer.Option("--end", envvar="PROVENIQ_MAINTENANCE_END", help="End it now.")
    ] = False,
    json_out: Json = False,
    url: Url = None,
    api_key: ApiKey = None,
    home: Home = None,
) -> None:
    """Start (--until TIME) or end (--end) a locker's maintenance.

    REF names the locker, e.g. locker-001. Meanwhile registrations to it answer 202
    pending_link and wait in the retry queue without counting as failures or tripping
    breakers. When maintenance ends they are retried at once.
    """
    if (until is not None) == end:
        raise typer.BadParameter("give either --until TIME or --end", param_hint="--until")
    result = service(url, api_key, home).call(
        "POST", f"/api/ops/lockers/{locker_ref}/maintenance", body={"until": until}
    )
    if json_out:
        print_json(result)
    elif result["maintenanceUntil"]:
        out.print(
            Text(f"{result['lockerRef']} in maintenance until {when(result['maintenanceUntil'])}")
        )
    else:
        out.print(
            Text(
                f"{result['lockerRef']}: maintenance ended; "
                f"{result['wokenEntries']} deferred link(s) retried now"
            )
        )
