"""Test-only instruments on a test's own database: which transaction changed which row, and a
switch that makes audit inserts fail inside the transaction that writes them.

``install`` adds a trigger to every table that records each row inserted, updated or deleted,
with the id of the transaction doing it, in that same transaction (so a change that rolls back
leaves no record either), and a trigger on ``audit_log`` that refuses the insert of an armed
action (``*``: every action) with an error, as a failing audit write would.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
import structlog
from psycopg.rows import dict_row

_INSTALL = r"""
CREATE TABLE test_changes (
    id   bigserial PRIMARY KEY,
    tx   bigint NOT NULL,
    tbl  text NOT NULL,
    op   text NOT NULL,
    old  jsonb,
    new  jsonb
);
CREATE FUNCTION test_capture() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO test_changes (tx, tbl, op, old, new)
    VALUES (pg_current_xact_id()::text::bigint, TG_TABLE_NAME, TG_OP,
            CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
            CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END);
    RETURN NULL;
END $$;
DO $$
DECLARE t text;
BEGIN
    FOR t IN SELECT tablename FROM pg_tables
             WHERE schemaname = 'public' AND tablename NOT LIKE 'test\_%'
    LOOP
        EXECUTE format('CREATE TRIGGER test_capture AFTER INSERT OR UPDATE OR DELETE ON %I '
                       'FOR EACH ROW EXECUTE FUNCTION test_capture()', t);
    END LOOP;
END $$;

CREATE TABLE test_audit_faults (action text PRIMARY KEY);
CREATE FUNCTION test_audit_fault() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT FROM test_audit_faults WHERE action IN (NEW.action, '*')) THEN
        RAISE EXCEPTION 'injected fault: the audit row of % is refused', NEW.action;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER test_audit_fault BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION test_audit_fault();
"""

BOOKKEEPING: dict[str, str] = {
    "sagas": "the saga log: claims, leases, timers and checkpoints; each effect of a step "
    "on the ledger is audited by that step",
    "saga_steps": "the saga log: one row per step attempt",
    "idempotency_keys": "stored answers for requests retried with the same Idempotency-Key",
    "verifications": "the verify worker's queue; a verification's outcome is audited as its "
    "asset's transition",
    "evidence": "photo facts the verify worker stores once, content-addressed",
    "locker_commands": "the device shadow: commands a parked saga waits on and the devices'"
    " answers; what the saga does with an answer is audited by its step",
    "locker_presence": "the presence each device last reported: telemetry, not a change",
}
"""Tables whose rows change without an audit row of their own, and why."""


@dataclass(frozen=True, slots=True)
class Change:
    """One row change as the capture trigger saw it."""

    id: int
    tx: int
    tbl: str
    op: str
    old: dict[str, Any] | None
    new: dict[str, Any] | None

    @property
    def audited_action(self) -> str | None:
        """The action of an inserted audit row, else None."""
        if self.tbl == "audit_log" and self.op == "INSERT" and self.new is not None:
            return str(self.new["action"])
        return None

    @property
    def is_state(self) -> bool:
        """A change of a ledger row: what must be audited."""
        return self.tbl != "audit_log" and self.tbl not in BOOKKEEPING


async def install(conninfo: str) -> None:
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        await conn.execute(_INSTALL)


async def arm(conninfo: str, action: str = "*") -> None:
    """From now on the insert of an audit row with ``action`` (``*``: any) fails."""
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        await conn.execute("INSERT INTO test_audit_faults VALUES (%s)", (action,))


async def disarm(conninfo: str) -> None:
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        await conn.execute("DELETE FROM test_audit_faults")


async def mark(conninfo: str) -> int:
    """The id of the last change recorded so far."""
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        cur = await conn.execute("SELECT COALESCE(max(id), 0) FROM test_changes")
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def changes_since(conninfo: str, after: int) -> list[Change]:
    """The changes committed since ``mark`` returned ``after``, in order."""
    async with await psycopg.AsyncConnection.connect(
        conninfo, autocommit=True, row_factory=dict_row
    ) as conn:
        cur = await conn.execute(
            "SELECT id, tx, tbl, op, old, new FROM test_changes WHERE id > %s ORDER BY id",
            (after,),
        )
        return [Change(**row) for row in await cur.fetchall()]


def _describe(changes: list[Change]) -> str:
    return ", ".join(sorted({f"{c.op} {c.tbl}" for c in changes}))


def unaudited(changes: list[Change]) -> list[str]:
    """What breaks "every change commits with its audit row", one line per transaction: a
    ledger change without an audit row in its transaction, or an audit row written by a
    transaction that changed nothing else (an audit written after the fact)."""
    by_tx: dict[int, list[Change]] = defaultdict(list)
    for change in changes:
        by_tx[change.tx].append(change)
    problems = []
    for tx, rows in by_tx.items():
        actions = sorted({a for c in rows if (a := c.audited_action)})
        state = [c for c in rows if c.is_state]
        others = [c for c in rows if c.tbl != "audit_log"]
        if state and not actions:
            problems.append(f"transaction {tx} changed {_describe(state)} without an audit row")
        if actions and not others:
            problems.append(
                f"transaction {tx} wrote audit rows {actions} and changed nothing else: "
                "the audit is not in the transaction of its change"
            )
    return problems


def audit_rows(changes: list[Change]) -> list[dict[str, Any]]:
    """The audit rows inserted, in order."""
    return [c.new for c in changes if c.audited_action and c.new is not None]


def state_changes(changes: list[Change]) -> list[Change]:
    """The ledger rows changed (bookkeeping tables left out)."""
    return [c for c in changes if c.is_state]


@pytest.fixture(autouse=True)
def plain_tracebacks() -> Iterator[None]:
    """Log exceptions with plain tracebacks while a test injects faults: the default console
    renderer prints every frame's locals, seconds per error on a loaded machine."""
    saved = structlog.get_config()
    plain = structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
    structlog.configure(processors=[*saved["processors"][:-1], plain])
    try:
        yield
    finally:
        structlog.configure(**saved)
