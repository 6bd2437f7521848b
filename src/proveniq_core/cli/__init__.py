"""The ``proveniq`` command line: serve, migrate, simulate, demo and the operator tools.

One module per command group; options (``options``), where a command connects
(``connect``) and how it prints (``render``) are each defined once. Every flag can also be
set through the ``PROVENIQ_*`` variable its ``--help`` names.
"""

from __future__ import annotations

import sys

from proveniq_core.cli import assets, audit, circuits, demo, dlq, keys, lockers, sagas, serve
from proveniq_core.cli import simulate as simulate_
from proveniq_core.cli.connect import RULE
from proveniq_core.cli.options import group
from proveniq_core.cli.render import CliError, error_line

app = group(
    "Proveniq Core: register physical assets across lockers, the ledger and Verify.\n\n" + RULE,
    pretty_exceptions_enable=False,
)
app.command(short_help="Run the HTTP API and the workers (may create the database).")(serve.serve)
app.command(short_help="Apply schema migrations (may create the database).")(serve.migrate)
app.command(short_help="Run virtual lockers against an MQTT broker until Ctrl-C.")(
    simulate_.simulate
)
app.command(short_help="Registrations, then each failure path (through the API).")(demo.demo)
app.add_typer(keys.app, name="keys")
app.add_typer(audit.app, name="audit")
app.add_typer(sagas.app, name="sagas")
app.add_typer(dlq.app, name="dlq")
app.add_typer(assets.app, name="assets")
app.add_typer(lockers.app, name="lockers")
app.add_typer(circuits.app, name="circuits")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; a failure the user can act on prints one line and exits non-zero."""
    try:
        app(args=argv if argv is not None else sys.argv[1:], prog_name="proveniq")
    except CliError as exc:
        error_line(exc.message)
        sys.exit(exc.code)
