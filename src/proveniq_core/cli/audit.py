"""``proveniq audit``: check the tamper-evident audit trail, in the database."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.text import Text

from proveniq_core.cli.connect import DATABASE, with_database
from proveniq_core.cli.options import DatabaseUrl, Home, Json, group
from proveniq_core.cli.render import err, out, print_json, progress

if TYPE_CHECKING:
    from proveniq_core import db
    from proveniq_core.ledger.audit import ChainReport

app = group(
    short_help="Verify the tamper-evident audit chain (in the database).",
    help=f"Check the tamper-evident audit trail. {DATABASE}",
)


@app.command("verify")
def verify(json_out: Json = False, home: Home = None, database_url: DatabaseUrl = None) -> None:
    """Seal pending rows, recompute the hash chain, name the first break.

    Pending audit rows are sealed first; then every row's hash is recomputed in order and
    the first row whose hash does not match is named.

    Exits 0 when the chain is intact, 2 when it is broken.
    """
    from proveniq_core.ledger import audit

    async def go(pool: db.Pool) -> tuple[int, ChainReport]:
        with progress("sealing and verifying the audit chain"):
            sealed = await audit.seal(pool)
            return sealed, await audit.verify(pool)

    sealed, report = with_database(home, database_url, go)
    if json_out:
        print_json(
            {
                "ok": report.ok,
                "checked": report.checked,
                "sealed": sealed,
                "unsealed": report.unsealed,
                "brokenId": report.broken_id,
                "brokenSeq": report.broken_seq,
                "reason": report.reason,
            }
        )
    elif report.ok:
        out.print(f"audit chain intact: {report.checked} rows verified ({sealed} newly sealed)")
    else:
        err.print(
            Text("audit chain BROKEN", style="red").append(
                f" at row id={report.broken_id} seq={report.broken_seq}: {report.reason}"
                f" ({report.checked} rows verified before it)",
                style="",
            ),
            soft_wrap=True,
        )
    if not report.ok:
        raise typer.Exit(2)
