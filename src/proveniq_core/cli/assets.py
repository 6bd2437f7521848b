"""``proveniq assets``: an operator's decision on a held asset, through the running service."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.text import Text

from proveniq_core.cli.connect import SERVICE, service
from proveniq_core.cli.options import ApiKey, Home, Json, Url, group
from proveniq_core.cli.render import error_text, out, print_json, status, when

app = group(
    short_help="Retry the link of a held asset, or cancel it (through the API).",
    help="Decide about assets the failure path holds: link_failed (the locker reported a "
    f"hardware fault) or pending_link. {SERVICE}",
)
# Arguments are described in each docstring: typer would print "<str>" after them here.
AssetArg = Annotated[str, typer.Argument(metavar="ID", hidden=True)]


def _print_outcome(o: dict[str, Any], json_out: bool) -> None:
    if json_out:
        print_json(o)
        return
    line = Text(f"asset {o['assetId']}: ").append(status(o["status"]))
    if o["status"] == "linked":
        line.append(f" (locker id {o['lockerId']})")
    elif o["status"] == "pending_link":
        line.append(f", next try {when(o['retryAt'])}" if o["retryAt"] else ", held")
    if o["status"] in ("pending_link", "link_failed") and o["lastError"]:
        line.append(f"; last error {error_text(o['lastError'])}", style="red")
    if o["sagaStatus"] == "compensating":
        line.append("; undo still running (retried automatically)")
    out.print(line, soft_wrap=True)


@app.command("retry-link")
def retry_link(
    asset_id: AssetArg,
    json_out: Json = False,
    url: Url = None,
    api_key: ApiKey = None,
    home: Home = None,
) -> None:
    """Link a link_failed asset again, with a new locker command.

    ID is the asset's id (assetId). Waits for the locker and prints how it ended: linked;
    pending_link (deferred again, retried automatically); or link_failed (the locker refused
    again: repair it, then retry-link again or cancel). A pending_link asset retries from
    the queue instead: dlq retry ID.
    """
    outcome = service(url, api_key, home).call(
        "POST",
        f"/api/ops/assets/{asset_id}/retry-link",
        waiting=f"linking asset {asset_id}: waiting for the locker",
    )
    _print_outcome(outcome, json_out)


@app.command("cancel")
def cancel(
    asset_id: AssetArg,
    json_out: Json = False,
    url: Url = None,
    api_key: ApiKey = None,
    home: Home = None,
) -> None:
    """Cancel a held registration (link_failed or pending_link).

    ID is the asset's id (assetId). Its saga compensates: a link the locker may hold is
    undone (unlink), the asset ends compensated and its queue entries discarded. There is no
    way back.
    """
    outcome = service(url, api_key, home).call(
        "POST",
        f"/api/ops/assets/{asset_id}/cancel",
        waiting=f"cancelling asset {asset_id}: undoing its link",
    )
    _print_outcome(outcome, json_out)
