"""``proveniq sagas``: recent sagas and one saga's step timeline, from the database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from proveniq_core.cli.connect import DATABASE, with_database
from proveniq_core.cli.options import DatabaseUrl, Home, Json, group
from proveniq_core.cli.render import (
    CliError,
    Col,
    clock,
    duration,
    fields,
    note,
    out,
    print_json,
    status,
    table,
    when,
)
from proveniq_core.saga.store import SAGA_STATUSES

if TYPE_CHECKING:
    from proveniq_core import db

app = group(
    short_help="Recent sagas and one saga's step timeline (in the database).",
    help="Inspect durable sagas of every tenant: recent runs, and one saga's step-by-step "
    f"timeline. {DATABASE}",
)


@app.command("list")
def list_(
    status_: Annotated[
        str | None,
        typer.Option(
            "--status",
            envvar="PROVENIQ_SAGAS_STATUS",
            metavar="STATUS",
            help=f"Only sagas in this status: {', '.join(SAGA_STATUSES)}.",
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            envvar="PROVENIQ_SAGAS_NAME",
            metavar="NAME",
            help="Only sagas of this kind, e.g. asset_registration.",
        ),
    ] = None,
    limit: Annotated[
        int,
        typer.Option(
            envvar="PROVENIQ_SAGAS_LIMIT",
            metavar="N",
            min=1,
            max=1000,
            help="How many, newest first.",
        ),
    ] = 20,
    json_out: Json = False,
    home: Home = None,
    database_url: DatabaseUrl = None,
) -> None:
    """List recent sagas of every tenant, newest first.

    Each with where it stands: "step" is the step running now, or the last one recorded;
    "error" is the failure code that stopped or compensated the saga. Times are UTC. On a
    narrow terminal the columns after id, status and error are left out first.

    One saga in full: proveniq sagas show ID
    """
    from proveniq_core.api.models import saga_summary

    if status_ is not None and status_ not in SAGA_STATUSES:
        raise typer.BadParameter(
            f"{status_!r} is not one of {', '.join(SAGA_STATUSES)}", param_hint="--status"
        )

    async def go(pool: db.Pool) -> list[db.Row]:
        from proveniq_core import db

        async with db.connection(pool) as conn:
            return await db.fetch_all(
                conn,
                "list_sagas",
                {
                    "tenant_id": None,
                    "status": status_,
                    "name": name,
                    "before_at": None,
                    "before_id": None,
                    "limit": limit + 1,
                },
            )

    rows = with_database(home, database_url, go)
    more = len(rows) > limit
    sagas = [saga_summary(r) for r in rows[:limit]]
    if json_out:
        print_json([s.model_dump(mode="json") for s in sagas])
        return
    if not sagas:
        note("no sagas match")
        return
    table(
        [
            Col("id", keep=True),
            Col("name"),
            Col("status", keep=True),
            Col("step"),
            Col("owner"),
            Col("created", whole=False),
            Col("duration"),
            Col("error"),
        ],
        [
            [
                Text(s.sagaId),
                Text(s.name),
                status(s.status),
                Text(s.lastStep or "–"),
                Text(s.owner or "–"),
                when(s.createdAt),
                duration(s.durationMs),
                Text(s.errorCode or ""),
            ]
            for s in sagas
        ],
        drop=("owner", "duration", "created", "step", "name"),
    )
    if more:
        note(f"the {limit} newest shown; --limit shows more")


@app.command("show")
def show(
    saga_id: Annotated[
        str,
        typer.Argument(metavar="ID", hidden=True),
    ],
    json_out: Json = False,
    home: Home = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Show one saga: its state, then every step attempt in order.

    ID is the saga's id, from 'sagas list' or an asset's sagaId. The header has its status,
    owner and lease, when it is due, and its error.

    The timeline has one row per attempt of a step or of its compensation: the process
    that ran it, its outcome (completed, failed, interrupted when its owner died, deferred
    when parked on a timer), its duration and error code. Times are UTC. An unknown id
    exits with status 1.
    """
    from proveniq_core.api.models import saga_view
    from proveniq_core.saga import store

    async def go(pool: db.Pool) -> tuple[db.Row, list[db.Row]] | None:
        from proveniq_core import db

        async with db.connection(pool) as conn:
            return await store.load(conn, saga_id)

    try:
        uuid.UUID(saga_id)
    except ValueError:
        found = None
    else:
        found = with_database(home, database_url, go)
    if found is None:
        raise CliError(f"no saga {saga_id!r}")
    saga, steps = found
    view = saga_view(saga, steps)
    if json_out:
        print_json(view.model_dump(mode="json"))
        return

    error = view.error or {}
    due = when(view.runAt) if view.runAt else "held until woken (operator or device online)"
    wait_ms = (view.runAt - datetime.now(UTC)).total_seconds() * 1000 if view.runAt else 0
    if view.finishedAt is None and wait_ms > 0:
        due += f" (due in {duration(wait_ms)})"
    finished = when(view.finishedAt)
    if view.finishedAt:
        finished += f" (took {duration(view.durationMs)})"
    fields(
        [
            ("saga", Text(f"{view.sagaId}  {view.name}")),
            ("status", status(view.status)),
            ("tenant", Text(saga["tenant_id"] or "–")),
            ("owner", Text(f"{view.owner or '–'} (epoch {view.epoch})")),
            ("lease until", Text(when(view.leaseUntil))),
            ("run at", Text(due)),
            ("created", Text(when(view.createdAt))),
            ("finished", Text(finished)),
            ("compensation rounds", Text(str(view.compensationRounds))),
            (
                "error",
                Text(
                    f"{error.get('code')} ({error.get('type')}): {error.get('message')}"
                    if error
                    else "–",
                    style="red" if error else "",
                ),
            ),
        ]
    )
    out.print()
    if not view.steps:
        out.print("no step has started yet")
        return
    table(
        [
            Col("#", keep=True),
            Col("step", keep=True),
            Col("phase"),
            Col("attempt"),
            Col("status", keep=True),
            Col("owner"),
            Col("started"),
            Col("finished"),
            Col("ms"),
            Col("error"),
        ],
        [
            [
                str(s.stepIndex),
                Text(s.step),
                Text(s.phase, style="magenta" if s.phase == "compensate" else ""),
                str(s.attempt),
                status(s.status),
                Text(s.owner or "–"),
                clock(s.startedAt),
                clock(s.finishedAt),
                f"{s.durationMs:.1f}" if s.durationMs is not None else "–",
                Text(s.errorCode or ""),
            ]
            for s in view.steps
        ],
        drop=("owner", "finished", "started", "attempt", "ms"),
        title="step timeline (UTC)",
    )
