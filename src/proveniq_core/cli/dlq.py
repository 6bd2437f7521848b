"""``proveniq dlq``: the retry queue, through the running service.

Retrying a link needs the service's MQTT connection and saga engine, so the queue's
commands call the service's ops API; listing and showing use the same API, so one command
group has one connection.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.text import Text

from proveniq_core.cli.connect import SERVICE, service
from proveniq_core.cli.options import ApiKey, Home, Json, Url, group
from proveniq_core.cli.render import (
    Col,
    error_text,
    fields,
    note,
    print_json,
    status,
    table,
    when,
)

app = group(
    short_help="The retry queue: list, show, retry, discard (through the API).",
    help="The retry queue (the dead-letter queue): locker links deferred by a timeout, an "
    "unreachable locker or maintenance, retried with backoff until resolved or exhausted. "
    f"List and inspect entries; retry one now or discard it. {SERVICE}",
)

# Arguments are described in each docstring: typer would print "<str>" after them here.
EntryArg = Annotated[str, typer.Argument(metavar="ID", hidden=True)]


@app.command("list")
def list_(
    status_: Annotated[
        str | None,
        typer.Option(
            "--status",
            envvar="PROVENIQ_DLQ_STATUS",
            metavar="STATUS",
            help="pending, retrying, exhausted (gave up: needs you), resolved or discarded.",
        ),
    ] = None,
    asset: Annotated[
        str | None,
        typer.Option(envvar="PROVENIQ_DLQ_ASSET", metavar="ID", help="Only this asset's entries."),
    ] = None,
    limit: Annotated[
        int,
        typer.Option(
            envvar="PROVENIQ_DLQ_LIMIT",
            metavar="N",
            min=1,
            max=200,
            help="How many, newest first.",
        ),
    ] = 50,
    json_out: Json = False,
    url: Url = None,
    api_key: ApiKey = None,
    home: Home = None,
) -> None:
    """List retry-queue entries of your tenant, newest first.

    "retries" counts failed retries (maintenance does not count). "next try" is when the
    next automatic retry runs; none: the entry waits for you. Times are UTC. On a narrow
    terminal the columns after id, status and last error are left out first.

    Then: proveniq dlq show ID, dlq retry ID or dlq discard ID.
    """
    page = service(url, api_key, home).call(
        "GET",
        "/api/ops/retry-queue",
        params={"status": status_, "assetId": asset, "limit": limit},
    )
    if json_out:
        print_json(page["items"])
        return
    if not page["items"]:
        note("no entries match")
        return
    table(
        [
            Col("id", keep=True),
            Col("asset"),
            Col("locker"),
            Col("status", keep=True),
            Col("retries"),
            Col("next try", whole=False),
            Col("last error"),
        ],
        [
            [
                Text(e["id"]),
                Text(e["assetId"]),
                Text(e["lockerRef"]),
                status(e["status"]),
                str(e["retryCount"]),
                when(e["nextRetryAt"]),
                Text((e["lastError"] or {}).get("code") or "–"),
            ]
            for e in page["items"]
        ],
        drop=("locker", "retries", "next try", "asset"),
    )
    if page["nextCursor"]:
        note(f"the {limit} newest shown; --limit shows more")


def _print_entry(e: dict[str, Any]) -> None:
    asset = Text(e["assetId"])
    if "assetStatus" in e:
        asset.append("  ").append(status(e["assetStatus"]))
    fields(
        [
            ("entry", Text(f"{e['id']}  ({e['operation']})")),
            ("status", status(e["status"])),
            ("asset", asset),
            ("locker", Text(e["lockerRef"])),
            ("saga", Text(e["sagaId"])),
            ("retries", Text(str(e["retryCount"]))),
            ("next try", Text(when(e["nextRetryAt"]))),
            (
                "last error",
                Text(error_text(e["lastError"]), style="red" if e["lastError"] else ""),
            ),
            ("first error", Text(when(e["firstErrorAt"]))),
            ("updated", Text(when(e["updatedAt"]))),
            ("closed", Text(when(e["closedAt"]))),
        ]
    )


def _print(entry: dict[str, Any], json_out: bool) -> None:
    if json_out:
        print_json(entry)
    else:
        _print_entry(entry)


@app.command("show")
def show(
    entry_id: EntryArg,
    json_out: Json = False,
    url: Url = None,
    api_key: ApiKey = None,
    home: Home = None,
) -> None:
    """Show one entry: status, retries, next try, last error, its saga.

    ID is the entry's id, from 'proveniq dlq list'.

    The saga's step timeline: proveniq sagas show SAGA_ID
    """
    _print(service(url, api_key, home).call("GET", f"/api/ops/retry-queue/{entry_id}"), json_out)


@app.command("retry")
def retry(
    entry_id: EntryArg,
    json_out: Json = False,
    url: Url = None,
    api_key: ApiKey = None,
    home: Home = None,
) -> None:
    """Retry an entry's locker link now, due or not.

    ID is the entry's id, from 'proveniq dlq list'. Exhausted and discarded entries too.
    Waits for the locker, then prints the entry and its asset's status: resolved and linked,
    or pending again with its next try. A resolved entry is refused.
    """
    entry = service(url, api_key, home).call(
        "POST",
        f"/api/ops/retry-queue/{entry_id}/retry",
        waiting=f"retrying entry {entry_id}: waiting for the locker",
    )
    _print(entry, json_out)


@app.command("discard")
def discard(
    entry_id: EntryArg,
    json_out: Json = False,
    url: Url = None,
    api_key: ApiKey = None,
    home: Home = None,
) -> None:
    """Stop retrying an entry.

    ID is the entry's id, from 'proveniq dlq list'. Its asset stays pending_link, held until
    you retry the entry (dlq retry ID) or cancel the registration (assets cancel ASSET_ID).
    """
    _print(
        service(url, api_key, home).call("POST", f"/api/ops/retry-queue/{entry_id}/discard"),
        json_out,
    )
