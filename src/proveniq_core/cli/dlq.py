"""Operator commands that act through a running service: ``dlq``, ``assets``, ``lockers``,
``circuits`` (DESIGN.md §8).

Retrying a link needs the service's MQTT connection and saga engine, so these commands call
its HTTP ops API instead of opening the database: ``--url`` names the service and
``--api-key`` authenticates (a key with ``ops:read`` / ``ops:write``). An error answer
prints the envelope's code and message on stderr and exits 1.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from proveniq_core.config import default_home

out = Console()
err = Console(stderr=True)

UrlOpt = Annotated[
    str,
    typer.Option("--url", envvar="PROVENIQ_URL", help="The running service (proveniq serve)."),
]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="PROVENIQ_API_KEY",
        help="A key with ops:read (to look) or ops:write (to act). "
        "Unset: the bootstrap admin key under --home.",
    ),
]
HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", envvar="PROVENIQ_HOME", help="Where serve keeps its bootstrap key."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON instead.")]
DEFAULT_URL = "http://127.0.0.1:8700"

_STYLE = {
    "pending": "cyan",
    "retrying": "yellow",
    "exhausted": "bold red",
    "resolved": "green",
    "discarded": "dim",
    "linked": "green",
    "pending_link": "yellow",
    "link_failed": "bold red",
    "compensated": "magenta",
    "closed": "green",
    "half_open": "yellow",
    "open": "bold red",
}


def api_key_or_bootstrap(api_key: str | None, home: Path | None) -> str:
    """``--api-key``, else the bootstrap key that ``serve`` wrote under ``--home``."""
    if api_key:
        return api_key
    path = (home or Path(os.environ.get("PROVENIQ_HOME", default_home()))) / "bootstrap-key"
    if not path.exists():
        raise typer.BadParameter(
            f"no --api-key and no bootstrap key at {path}", param_hint="--api-key"
        )
    return path.read_text().strip()


def call(
    method: str,
    path: str,
    *,
    url: str,
    api_key: str | None,
    home: Path | None,
    params: dict[str, Any] | None = None,
    body: Any = None,
) -> Any:
    """One request to the service's API; its JSON, or exit 1 printing why it failed.

    The timeout is generous: a retry waits for the locker (up to its command timeout)."""
    key = api_key_or_bootstrap(api_key, home)
    try:
        response = httpx.request(
            method,
            url.rstrip("/") + path,
            params={k: v for k, v in (params or {}).items() if v is not None},
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=60.0,
        )
    except httpx.HTTPError as exc:
        err.print(Text(f"cannot reach {url}: {exc}"))
        raise typer.Exit(1) from None
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            reason = f"{error['code']}: {error['message']}"
        except (ValueError, KeyError, TypeError):
            reason = response.text[:200] or response.reason_phrase
        err.print(Text(f"error {response.status_code} {reason}", style="red"))
        raise typer.Exit(1)
    return response.json()


def _status(status: str | None) -> Text:
    return Text(status or "–", style=_STYLE.get(status or "", ""))


def _when(at: str | None) -> str:
    if not at:
        return "–"
    return f"{datetime.fromisoformat(at).astimezone(UTC):%Y-%m-%d %H:%M:%S}Z"


def _error(doc: dict[str, Any] | None) -> str:
    return f"{doc.get('code')}: {doc.get('message') or doc.get('fault') or ''}" if doc else "–"


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _out(value: Any, json_out: bool, show: Callable[[Any], None]) -> None:
    """Print an answer: as JSON with --json, else for people."""
    if json_out:
        _print_json(value)
    else:
        show(value)


# -- dlq ----------------------------------------------------------------------------------

dlq_app = typer.Typer(
    help="The retry queue (the seed's DLQ): locker links deferred by a timeout, an "
    "unreachable locker or maintenance, retried with backoff until resolved or exhausted. "
    "List and inspect entries; retry one now or discard it. Talks to a running service.",
    no_args_is_help=True,
)


@dlq_app.command("list")
def dlq_list(
    status: Annotated[
        str | None,
        typer.Option(
            help="pending, retrying, exhausted (gave up: needs you), resolved, discarded."
        ),
    ] = None,
    asset: Annotated[str | None, typer.Option(help="Only this asset's entries.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="How many, newest first.")] = 50,
    json_out: JsonOpt = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    home: HomeOpt = None,
) -> None:
    """List retry-queue entries of your tenant, newest first.

    "retries" counts failed retries (maintenance does not count).
    "next try" is when the next automatic retry runs; none: the entry
    waits for you. Times are UTC.
    Then: proveniq dlq show ID, dlq retry ID or dlq discard ID.
    """
    page = call(
        "GET",
        "/api/ops/retry-queue",
        url=url,
        api_key=api_key,
        home=home,
        params={"status": status, "assetId": asset, "limit": limit},
    )
    if json_out:
        _print_json(page["items"])
        return
    if not page["items"]:
        err.print("no entries match")
        return
    table = Table(
        "id",
        "asset",
        "locker",
        "status",
        "retries",
        "next try",
        "last error",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for i in (0, 1, 3):  # ids (to paste) and status stay whole on a narrow terminal
        table.columns[i].no_wrap = True
    for e in page["items"]:
        table.add_row(
            Text(e["id"]),
            Text(e["assetId"]),
            Text(e["lockerRef"]),
            _status(e["status"]),
            str(e["retryCount"]),
            _when(e["nextRetryAt"]),
            Text((e["lastError"] or {}).get("code") or "–"),
        )
    out.print(table)
    if page["nextCursor"]:
        err.print(f"[dim]the {limit} newest shown; --limit shows more[/dim]")


def _print_entry(e: dict[str, Any]) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("entry", Text(f"{e['id']}  ({e['operation']})"))
    grid.add_row("status", _status(e["status"]))
    if "assetStatus" in e:
        grid.add_row("asset", Text(f"{e['assetId']}  ", style="").append(_status(e["assetStatus"])))
    else:
        grid.add_row("asset", Text(e["assetId"]))
    grid.add_row("locker", Text(e["lockerRef"]))
    grid.add_row("saga", Text(e["sagaId"]))
    grid.add_row("retries", str(e["retryCount"]))
    grid.add_row("next try", _when(e["nextRetryAt"]))
    grid.add_row("last error", Text(_error(e["lastError"]), style="red" if e["lastError"] else ""))
    grid.add_row("first error", _when(e["firstErrorAt"]))
    grid.add_row("updated", _when(e["updatedAt"]))
    grid.add_row("closed", _when(e["closedAt"]))
    out.print(grid)


EntryArg = Annotated[str, typer.Argument(help="The entry's id, from 'proveniq dlq list'.")]


@dlq_app.command("show")
def dlq_show(
    entry_id: EntryArg,
    json_out: JsonOpt = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    home: HomeOpt = None,
) -> None:
    """Show one entry: status, retries, next try, last error, its saga.

    The saga's step timeline: proveniq sagas show SAGA_ID
    """
    entry = call("GET", f"/api/ops/retry-queue/{entry_id}", url=url, api_key=api_key, home=home)
    _out(entry, json_out, _print_entry)


@dlq_app.command("retry")
def dlq_retry(
    entry_id: EntryArg,
    json_out: JsonOpt = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    home: HomeOpt = None,
) -> None:
    """Retry an entry's locker link now, due or not.

    Exhausted and discarded entries too. Waits for the locker, then
    prints the entry and its asset's status: resolved and linked, or
    pending again with its next try. A resolved entry is refused.
    """
    entry = call(
        "POST", f"/api/ops/retry-queue/{entry_id}/retry", url=url, api_key=api_key, home=home
    )
    _out(entry, json_out, _print_entry)


@dlq_app.command("discard")
def dlq_discard(
    entry_id: EntryArg,
    json_out: JsonOpt = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    home: HomeOpt = None,
) -> None:
    """Stop retrying an entry.

    Its asset stays pending_link, held until you retry the entry
    (dlq retry ID) or cancel the registration (assets cancel ASSET_ID).
    """
    entry = call(
        "POST", f"/api/ops/retry-queue/{entry_id}/discard", url=url, api_key=api_key, home=home
    )
    _out(entry, json_out, _print_entry)


# -- assets -------------------------------------------------------------------------------

assets_app = typer.Typer(
    help="Decide about assets the failure path holds: link_failed (the locker reported a "
    "hardware fault) or pending_link. Talks to a running service.",
    no_args_is_help=True,
)
AssetArg = Annotated[str, typer.Argument(help="The asset's id (assetId).")]


def _print_outcome(o: dict[str, Any]) -> None:
    line = Text(f"asset {o['assetId']}: ").append(_status(o["status"]))
    if o["status"] == "linked":
        line.append(f" (locker id {o['lockerId']})")
    elif o["status"] == "pending_link":
        line.append(f", next try {_when(o['retryAt'])}" if o["retryAt"] else ", held")
    if o["status"] in ("pending_link", "link_failed") and o["lastError"]:
        line.append(f"; last error {_error(o['lastError'])}", style="red")
    if o["sagaStatus"] == "compensating":
        line.append("; undo still running (retried automatically)")
    out.print(line)


@assets_app.command("retry-link")
def assets_retry_link(
    asset_id: AssetArg,
    json_out: JsonOpt = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    home: HomeOpt = None,
) -> None:
    """Link a link_failed asset again, with a new locker command.

    Waits for the locker and prints how it ended: linked; pending_link
    (deferred again, retried automatically); or link_failed (the locker
    refused again: repair it, then retry-link again or cancel).
    A pending_link asset retries from the queue instead: dlq retry ID.
    """
    outcome = call(
        "POST", f"/api/ops/assets/{asset_id}/retry-link", url=url, api_key=api_key, home=home
    )
    _out(outcome, json_out, _print_outcome)


@assets_app.command("cancel")
def assets_cancel(
    asset_id: AssetArg,
    json_out: JsonOpt = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    home: HomeOpt = None,
) -> None:
    """Cancel a held registration (link_failed or pending_link).

    Its saga compensates: a link the locker may hold is undone (unlink),
    the asset ends compensated and its queue entries discarded.
    There is no way back.
    """
    outcome = call(
        "POST", f"/api/ops/assets/{asset_id}/cancel", url=url, api_key=api_key, home=home
    )
    _out(outcome, json_out, _print_outcome)


# -- lockers ------------------------------------------------------------------------------

lockers_app = typer.Typer(help="Locker operations on a running service.", no_args_is_help=True)


@lockers_app.command("maintenance")
def lockers_maintenance(
    locker_ref: Annotated[str, typer.Argument(help="The locker, e.g. locker-001.")],
    until: Annotated[
        str | None,
        typer.Option(
            help="ISO 8601 time with offset, e.g. 2026-12-01T18:00:00Z; at most 30 days ahead."
        ),
    ] = None,
    end: Annotated[bool, typer.Option("--end", help="End maintenance now.")] = False,
    json_out: JsonOpt = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    home: HomeOpt = None,
) -> None:
    """Put a locker in maintenance until a time (--until), or end it (--end).

    Meanwhile registrations to it answer 202 pending_link and wait in
    the retry queue without counting as failures or tripping breakers.
    When maintenance ends they are retried at once.
    """
    if (until is not None) == end:
        raise typer.BadParameter("give either --until TIME or --end", param_hint="--until")
    result = call(
        "POST",
        f"/api/ops/lockers/{locker_ref}/maintenance",
        url=url,
        api_key=api_key,
        home=home,
        body={"until": until},
    )
    if json_out:
        _print_json(result)
    elif result["maintenanceUntil"]:
        out.print(f"{result['lockerRef']} in maintenance until {_when(result['maintenanceUntil'])}")
    else:
        out.print(
            f"{result['lockerRef']}: maintenance ended; "
            f"{result['wokenEntries']} deferred link(s) retried now"
        )


# -- circuits -----------------------------------------------------------------------------

circuits_app = typer.Typer(
    help="Circuit breakers of a running service (one per locker, the broker and the ledger): "
    "'proveniq circuits' lists them; 'proveniq circuits reset NAME' closes one.",
    invoke_without_command=True,
)


@circuits_app.callback()
def circuits(
    ctx: typer.Context,
    json_out: JsonOpt = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    home: HomeOpt = None,
) -> None:
    """List circuit breakers and their state.

    closed: calls flow; open: failing fast until a probe may go;
    half_open: probing. "failures" counts those in the current window.
    """
    if ctx.invoked_subcommand is not None:
        return
    page = call("GET", "/api/ops/circuits", url=url, api_key=api_key, home=home)
    if json_out:
        _print_json(page)
        return
    if not page["items"]:
        err.print("no circuit breakers yet")
        return
    table = Table("name", "state", "failures", box=box.SIMPLE_HEAD, pad_edge=False)
    for c in page["items"]:
        table.add_row(Text(str(c["name"])), _status(c.get("state")), str(c.get("failures", "–")))
    out.print(table)


@circuits_app.command("reset")
def circuits_reset(
    name: Annotated[str, typer.Argument(help="The circuit's name, from 'proveniq circuits'.")],
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    home: HomeOpt = None,
) -> None:
    """Close a circuit breaker now, e.g. once the locker it guards is repaired."""
    path = f"/api/ops/circuits/{quote(name, safe='')}/reset"
    result = call("POST", path, url=url, api_key=api_key, home=home)
    out.print(Text(f"circuit {result.get('name', name)}: ").append(_status(result.get("state"))))


__all__ = ["api_key_or_bootstrap", "assets_app", "call", "circuits_app", "dlq_app", "lockers_app"]
