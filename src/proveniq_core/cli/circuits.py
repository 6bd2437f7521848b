"""``proveniq circuits``: the service's circuit breakers (they live in its memory)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

import typer
from rich.text import Text

from proveniq_core.cli.connect import SERVICE, service
from proveniq_core.cli.options import ApiKey, Home, Json, Url, group
from proveniq_core.cli.render import Col, note, out, print_json, status, table, when

app = group(
    short_help="Circuit breakers: list, reset (through the API).",
    help="Circuit breakers of the running service (one per locker, the broker and the "
    "ledger): 'proveniq circuits' lists them; 'proveniq circuits reset NAME' closes one. "
    f"{SERVICE}",
    invoke_without_command=True,
    no_args_is_help=False,
)


@app.callback()
def circuits(
    ctx: typer.Context,
    json_out: Json = False,
    url: Url = None,
    api_key: ApiKey = None,
    home: Home = None,
) -> None:
    """List circuit breakers and their state.

    closed: calls flow; open: failing fast until a probe may go; half_open: probing.
    "failures" counts those in the current window; "probe" is when an open circuit
    lets its next probe through.
    """
    if ctx.invoked_subcommand is not None:
        return
    page = service(url, api_key, home).call("GET", "/api/ops/circuits")
    if json_out:
        print_json(page)
        return
    if not page["items"]:
        note("no circuit breakers yet")
        return
    table(
        [
            Col("name", keep=True),
            Col("state", keep=True),
            Col("failures"),
            Col("opened"),
            Col("probe"),
        ],
        [
            [
                Text(str(c["name"])),
                status(c.get("state")),
                str(c.get("failures", "–")),
                when(c.get("openedAt")),
                f"in {c['retryAfter']:.1f} s" if c.get("retryAfter") else "–",
            ]
            for c in page["items"]
        ],
        drop=("opened", "probe", "failures"),
    )


@app.command("reset")
def reset(
    name: Annotated[str, typer.Argument(metavar="NAME", hidden=True)],
    json_out: Json = False,
    url: Url = None,
    api_key: ApiKey = None,
    home: Home = None,
) -> None:
    """Close a circuit breaker now (once what it guards is repaired).

    NAME is the circuit's name, from 'proveniq circuits': ledger, locker (the broker) or
    locker:REF.
    """
    result = service(url, api_key, home).call(
        "POST", f"/api/ops/circuits/{quote(name, safe='')}/reset"
    )
    if json_out:
        print_json(result)
        return
    out.print(Text(f"circuit {result.get('name', name)}: ").append(status(result.get("state"))))
