"""PostgreSQL access: the pool, named queries, migrations, error translation, the waker and
the one claim loop.

Callers import the package (``from proveniq_core import db``) and use the names below;
``_pool`` holds the pool, connections, named queries and error translation, ``_migrate``
the migrations, ``_waker`` the ``LISTEN/NOTIFY`` waker and ``claim_loop``, ``_group`` group commit.
"""

from __future__ import annotations

from proveniq_core.db._group import GroupCommit, Unit
from proveniq_core.db._migrate import (
    MIGRATION_LOCK,
    Migration,
    migrate,
    migrations,
    pending_migrations,
)
from proveniq_core.db._pool import (
    LEDGER_BREAKER,
    NEVER,
    Conn,
    Pool,
    Row,
    connection,
    execute,
    fetch_all,
    fetch_one,
    guard,
    handed_out_since,
    is_ledger_down,
    jsonb,
    open_pool,
    queries,
    sync,
    transaction,
    translate,
    translate_errors,
)
from proveniq_core.db._waker import Waker, claim_loop

__all__ = [
    "LEDGER_BREAKER",
    "MIGRATION_LOCK",
    "NEVER",
    "Conn",
    "GroupCommit",
    "Migration",
    "Pool",
    "Row",
    "Unit",
    "Waker",
    "claim_loop",
    "connection",
    "execute",
    "fetch_all",
    "fetch_one",
    "guard",
    "handed_out_since",
    "is_ledger_down",
    "jsonb",
    "migrate",
    "migrations",
    "open_pool",
    "pending_migrations",
    "queries",
    "sync",
    "transaction",
    "translate",
    "translate_errors",
]
