"""``proveniq keys``: create, list and revoke API keys, in the database."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from proveniq_core.cli.connect import DATABASE, with_database
from proveniq_core.cli.options import DatabaseUrl, Home, Json, group
from proveniq_core.cli.render import CliError, Col, out, print_json, table, when

if TYPE_CHECKING:
    from proveniq_core import db

app = group(
    short_help="API keys: create, list, revoke (in the database).",
    help=f"Create, list and revoke API keys. {DATABASE}",
)


@app.command("create")
def create(
    tenant: Annotated[
        str,
        typer.Option(
            envvar="PROVENIQ_KEY_TENANT", metavar="TENANT", help="Tenant id (created if new)."
        ),
    ],
    scopes: Annotated[
        str,
        typer.Option(
            envvar="PROVENIQ_KEY_SCOPES",
            metavar="SCOPES",
            help="Comma-separated: assets:read, assets:write, reviews:decide, "
            "webhooks:manage, ops:read, ops:write.",
        ),
    ] = "assets:read,assets:write",
    name: Annotated[
        str, typer.Option(envvar="PROVENIQ_KEY_NAME", metavar="TEXT", help="A label for the key.")
    ] = "",
    home: Home = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create an API key and print it (it is shown only this once)."""
    from proveniq_core.errors import CoreError
    from proveniq_core.ledger import keys

    wanted = [s.strip() for s in scopes.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(keys.SCOPES))
    if unknown:  # checked before opening the database: nothing is created
        raise typer.BadParameter(
            f"unknown scope(s): {', '.join(unknown)}; known: {', '.join(keys.SCOPES)}",
            param_hint="--scopes",
        )

    async def go(pool: db.Pool) -> str:
        return await keys.create_key(pool, tenant, wanted, name)

    try:
        token = with_database(home, database_url, go)
    except CoreError as exc:
        raise CliError(f"{exc.message} {exc.details or ''}".strip()) from None
    print(token)


@app.command("list")
def list_(json_out: Json = False, home: Home = None, database_url: DatabaseUrl = None) -> None:
    """List API keys: ids, tenants, scopes, never secrets. Times are UTC."""

    async def go(pool: db.Pool) -> list[db.Row]:
        from proveniq_core import db

        async with db.connection(pool) as conn:
            return await db.fetch_all(conn, "list_api_keys")

    rows = with_database(home, database_url, go)
    if json_out:
        print_json([_key_json(r) for r in rows])
        return
    table(
        [
            Col("id", keep=True),
            Col("tenant", keep=True),
            Col("scopes", whole=False),
            Col("name", whole=False),
            Col("created", whole=False),
            Col("revoked", whole=False),
        ],
        [
            [
                Text(r["id"]),
                Text(r["tenant_id"]),
                Text(", ".join(r["scopes"])),
                Text(r["name"] or ""),
                when(r["created_at"]),
                when(r["revoked_at"]) if r["revoked_at"] else "",
            ]
            for r in rows
        ],
        drop=("name", "revoked", "created", "scopes"),
    )


def _key_json(row: db.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "tenantId": row["tenant_id"],
        "name": row["name"],
        "scopes": list(row["scopes"]),
        "createdAt": row["created_at"].isoformat(),
        "revokedAt": row["revoked_at"].isoformat() if row["revoked_at"] else None,
    }


@app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(metavar="ID", hidden=True)],
    home: Home = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Revoke an API key; requests with it answer 401 from now on.

    ID is the key's id: the part of pk_ID_SECRET between the underscores, as 'keys list'
    shows it.
    """

    async def go(pool: db.Pool) -> int:
        from proveniq_core import db

        async with db.connection(pool) as conn:
            return await db.execute(conn, "revoke_api_key", {"id": key_id})

    if not with_database(home, database_url, go):
        raise CliError(f"no active key {key_id!r}")
    out.print(Text(f"revoked {key_id}"))
