"""Every state-changing route and operator command commits its change with its audit row.

The routes are the POST, PUT, PATCH and DELETE operations of the app's OpenAPI document; the
commands are the CLI's. Each one is in OPERATIONS (how to perform it here, the audit actions
it writes), in NOT_AUDITED (why it has no audit row) or, for commands, in READ_ONLY; one in
none of them fails ``test_every_mutating_route_and_command_is_listed`` until it is added.
The console's form routes, left out of the OpenAPI document, are enumerated from the app's
routes: each is in CONSOLE (the API route whose operator function it calls, with the same
arguments and so the same audit) or in NOT_AUDITED.

How the test knows a change and its audit row were committed by the same transaction: a
test-only trigger on every table of the test's own database records each row inserted,
updated or deleted with the id of the transaction doing it (``pg_current_xact_id()``), inside
that transaction, so a rolled-back change leaves no record (``audit_probe``). Core runs as
``serve --role api``: it serves every route but runs no background worker, so every
transaction between the start and the end of an operation is the operation's own. Then:

- every transaction that changed a ledger row (a table not in ``BOOKKEEPING``: the saga log,
  stored idempotent answers, the verify worker's queue) inserted an audit row too;
- no transaction inserted an audit row without changing anything else (the shape of an
  audit written after its change, in a transaction of its own);
- the operation wrote its audit actions under the caller's identity (and, over HTTP, the
  request's id);
- with every audit insert refused, the operation fails cleanly and commits no ledger row.

Transaction ids are recorded as the rows change rather than read afterwards from ``xmin``:
the sealer's update and a saga's next step replace a row's ``xmin``, a deleted row has none,
and two transactions' ``now()`` can be equal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import typer.main
import uvicorn
from fastapi import FastAPI
from fastapi.routing import APIRoute

from proveniq_core import db
from proveniq_core.api.app import create_app
from proveniq_core.cli import app as cli_app
from proveniq_core.embedded import free_port
from proveniq_core.ledger import keys
from proveniq_core.service import Core
from proveniq_core.verify.worker import VerifyWorker
from proveniq_core.webhooks import endpoints
from tests.integration import audit_probe
from tests.integration.audit_probe import plain_tracebacks as plain_tracebacks
from tests.integration.conftest import TENANT, core_running, first_ref

MUTATING = ("POST", "PUT", "PATCH", "DELETE")
OPERATOR = "Ana Operator"


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP request (``method``, ``path``, ``body``) or one CLI command (``args``)."""

    method: str = ""
    path: str = ""
    body: Any = None
    args: tuple[str, ...] = ()


@dataclass
class World:
    """A running Core (API role) served on a port, a named admin key of TENANT, its client."""

    core: Core
    url: str
    key: str
    http: httpx.AsyncClient
    database_url: str
    home: Path
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def actor(self) -> str:
        """The audit trail's actor for the key: its person's name (``Principal.actor``)."""
        return OPERATOR

    @property
    def ref(self) -> str:
        return first_ref(self.core)


Prepare = Callable[[World], Awaitable[Call]]


@dataclass(frozen=True, slots=True)
class Operation:
    """How to perform one mutating operation on a fresh Core, and the audit actions it
    writes itself (under the caller's identity; its saga's steps may audit more)."""

    prepare: Prepare
    actions: tuple[str, ...]
    actor: str | None = None  # None: the caller's key


# -- preparing the state an operation acts on ------------------------------------------------


async def ok(response: Awaitable[httpx.Response], *statuses: int) -> dict[str, Any]:
    answer = await response
    assert answer.status_code in (statuses or (200,)), answer.text
    body: dict[str, Any] = answer.json() if answer.content else {}
    return body


def asset_body(w: World) -> dict[str, Any]:
    return {"name": "Watch", "category": "watch", "lockerRef": w.ref}


def maintenance_path(w: World) -> str:
    return f"/api/ops/lockers/{w.ref}/maintenance"


async def held_pending(w: World) -> tuple[str, str]:
    """An asset held pending_link by its locker's maintenance: its id and its entry's."""
    until = datetime.now(UTC) + timedelta(hours=1)
    await ok(w.http.post(maintenance_path(w), json={"until": until.isoformat()}))
    asset = await ok(w.http.post("/api/assets", json=asset_body(w)), 202)
    page = await ok(w.http.get("/api/ops/retry-queue", params={"assetId": asset["assetId"]}))
    [entry] = page["items"]
    return str(asset["assetId"]), str(entry["id"])


async def held_failed(w: World) -> str:
    """An asset held link_failed by a hardware fault, the fault since cleared."""
    await ok(w.http.post("/sim/faults", json={"lockerRef": w.ref, "fault": "hardware_fault"}), 201)
    refused = await w.http.post("/api/assets", json=asset_body(w))
    assert refused.status_code == 502, refused.text
    await ok(w.http.delete("/sim/faults"))
    return str(refused.json()["error"]["assetId"])


async def open_alert(w: World) -> str:
    """An open ops alert: a link the locker refused (link_failed)."""
    asset_id = await held_failed(w)
    page = await ok(w.http.get("/api/ops/alerts", params={"open": "true"}))
    [alert] = [a for a in page["items"] if a["subject"].get("assetId") == asset_id]
    return str(alert["alertId"])


async def exhausted(w: World) -> str:
    """An exhausted retry-queue entry: a link_failed asset retried while the fault lasted."""
    await ok(w.http.post("/sim/faults", json={"lockerRef": w.ref, "fault": "hardware_fault"}), 201)
    refused = await w.http.post("/api/assets", json=asset_body(w))
    assert refused.status_code == 502, refused.text
    asset_id = refused.json()["error"]["assetId"]
    again = await ok(w.http.post(f"/api/ops/assets/{asset_id}/retry-link"))
    assert again["retryEntry"]["status"] == "exhausted", again
    await ok(w.http.delete("/sim/faults"))
    return str(again["retryEntry"]["id"])


async def webhook(w: World) -> str:
    body = {"url": "http://127.0.0.1:9/hooks", "events": ["asset.created"]}
    return str((await ok(w.http.post("/api/webhooks", json=body), 201))["webhookId"])


async def review(w: World) -> str:
    """A review opened by the verify worker, driven here (the API role runs no worker)."""
    spoil = {"lockerRef": w.ref, "fault": "bad_evidence", "defect": "low_accuracy", "count": 1}
    await ok(w.http.post("/sim/faults", json=spoil), 201)
    asset_id = (await ok(w.http.post("/api/assets", json=asset_body(w)), 201))["assetId"]
    worker = VerifyWorker(w.core.pool, w.core.gateway, w.core.evidence, w.core.settings)
    deadline = time.monotonic() + 20
    while True:
        await worker.process_next()
        items = (await ok(w.http.get("/api/reviews")))["items"]
        found = [r["reviewId"] for r in items if r["assetId"] == asset_id]
        if found:
            return str(found[0])
        assert time.monotonic() < deadline, "no review opened"
        await asyncio.sleep(0.05)


# -- the operations --------------------------------------------------------------------------


async def create_asset(w: World) -> Call:
    return Call("POST", "/api/assets", asset_body(w))


async def register_locker(w: World) -> Call:
    body = {"lockerRef": "audit-locker-1", "site": {"lat": 52.5, "lon": 13.4}, "geofenceM": 50}
    return Call("POST", "/api/lockers", body)


async def decide_review(w: World) -> Call:
    return Call("POST", f"/api/reviews/{await review(w)}/decision", {"decision": "approve"})


async def retry_entry(w: World) -> Call:
    _, entry_id = await held_pending(w)
    return Call("POST", f"/api/ops/retry-queue/{entry_id}/retry")


async def discard_entry(w: World) -> Call:
    _, entry_id = await held_pending(w)
    return Call("POST", f"/api/ops/retry-queue/{entry_id}/discard")


async def discard_entry_with_reason(w: World) -> Call:
    _, entry_id = await held_pending(w)
    body = {"reason": "locker decommissioned"}
    return Call("POST", f"/api/ops/retry-queue/{entry_id}/discard", body)


async def retry_exhausted(w: World) -> Call:
    await exhausted(w)
    return Call("POST", "/api/ops/retry-queue/retry-exhausted")


async def acknowledge_alert(w: World) -> Call:
    return Call("POST", f"/api/ops/alerts/{await open_alert(w)}/acknowledge")


async def resolve_alert(w: World) -> Call:
    return Call("POST", f"/api/ops/alerts/{await open_alert(w)}/resolve")


async def retry_link(w: World) -> Call:
    return Call("POST", f"/api/ops/assets/{await held_failed(w)}/retry-link")


async def cancel(w: World) -> Call:
    asset_id, _ = await held_pending(w)
    return Call("POST", f"/api/ops/assets/{asset_id}/cancel")


async def start_maintenance(w: World) -> Call:
    until = datetime.now(UTC) + timedelta(hours=2)
    return Call("POST", maintenance_path(w), {"until": until.isoformat()})


async def end_maintenance(w: World) -> Call:
    await held_pending(w)  # ending maintenance wakes this entry, in the same transaction
    return Call("POST", maintenance_path(w), {"until": None})


async def create_webhook(w: World) -> Call:
    return Call("POST", "/api/webhooks", {"url": "http://127.0.0.1:9/a", "events": ["ops.alert"]})


async def delete_webhook(w: World) -> Call:
    return Call("DELETE", f"/api/webhooks/{await webhook(w)}")


async def enable_webhook(w: World) -> Call:
    webhook_id = await webhook(w)
    async with db.transaction(w.core.pool) as conn:
        await endpoints.disable(conn, webhook_id, "failing for 24 h")
    return Call("POST", f"/api/webhooks/{webhook_id}/enable")


async def redeliver(w: World) -> Call:
    webhook_id = await webhook(w)
    await ok(w.http.post("/api/assets", json=asset_body(w)), 201)
    [delivery] = (await ok(w.http.get(f"/api/webhooks/{webhook_id}/deliveries")))["items"]
    path = f"/api/webhooks/{webhook_id}/deliveries/{delivery['deliveryId']}/redeliver"
    return Call("POST", path)


async def keys_create(w: World) -> Call:
    return Call(args=("keys", "create", "--tenant", TENANT, "--scopes", "assets:read"))


async def keys_revoke(w: World) -> Call:
    token = await keys.create_key(w.core.pool, TENANT, ["assets:read"], "to revoke")
    return Call(args=("keys", "revoke", token.split("_")[1]))


async def dlq_retry(w: World) -> Call:
    _, entry_id = await held_pending(w)
    return Call(args=("dlq", "retry", entry_id))


async def dlq_discard(w: World) -> Call:
    _, entry_id = await held_pending(w)
    return Call(args=("dlq", "discard", entry_id))


async def assets_retry_link(w: World) -> Call:
    return Call(args=("assets", "retry-link", await held_failed(w)))


async def assets_cancel(w: World) -> Call:
    asset_id, _ = await held_pending(w)
    return Call(args=("assets", "cancel", asset_id))


async def lockers_maintenance(w: World) -> Call:
    until = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    return Call(args=("lockers", "maintenance", w.ref, "--until", until))


OPERATIONS: dict[str, Operation] = {
    "POST /api/assets": Operation(create_asset, ("asset.created", "asset.linked")),
    "POST /api/lockers": Operation(register_locker, ("locker.registered",)),
    "POST /api/reviews/{review_id}/decision": Operation(
        decide_review, ("review.approved", "asset.verified")
    ),
    "POST /api/ops/retry-queue/{entry_id}/retry": Operation(retry_entry, ("retry_entry.retried",)),
    "POST /api/ops/retry-queue/{entry_id}/discard": Operation(
        discard_entry, ("retry_entry.discarded",)
    ),
    "POST /api/ops/retry-queue/{entry_id}/discard [with a reason]": Operation(
        discard_entry_with_reason, ("retry_entry.discarded",)
    ),
    "POST /api/ops/retry-queue/retry-exhausted": Operation(
        retry_exhausted, ("retry_entry.retried",)
    ),
    "POST /api/ops/alerts/{alert_id}/acknowledge": Operation(
        acknowledge_alert, ("alert.acknowledged",)
    ),
    "POST /api/ops/alerts/{alert_id}/resolve": Operation(resolve_alert, ("alert.resolved",)),
    "POST /api/ops/assets/{asset_id}/retry-link": Operation(retry_link, ("asset.pending_link",)),
    "POST /api/ops/assets/{asset_id}/cancel": Operation(cancel, ("asset.cancel",)),
    "POST /api/ops/lockers/{locker_ref}/maintenance [start]": Operation(
        start_maintenance, ("locker.maintenance",)
    ),
    "POST /api/ops/lockers/{locker_ref}/maintenance [end, waking a deferred link]": Operation(
        end_maintenance, ("locker.maintenance",)
    ),
    "POST /api/webhooks": Operation(create_webhook, ("webhook.created",)),
    "DELETE /api/webhooks/{webhook_id}": Operation(delete_webhook, ("webhook.deleted",)),
    "POST /api/webhooks/{webhook_id}/enable": Operation(enable_webhook, ("webhook.enabled",)),
    "POST /api/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver": Operation(
        redeliver, ("webhook.redelivered",)
    ),
    "proveniq keys create": Operation(keys_create, ("api_key.created",), actor="system:cli"),
    "proveniq keys revoke": Operation(keys_revoke, ("api_key.revoked",), actor="system:cli"),
    "proveniq dlq retry": Operation(dlq_retry, ("retry_entry.retried",)),
    "proveniq dlq discard": Operation(dlq_discard, ("retry_entry.discarded",)),
    "proveniq assets retry-link": Operation(assets_retry_link, ("asset.pending_link",)),
    "proveniq assets cancel": Operation(assets_cancel, ("asset.cancel",)),
    "proveniq lockers maintenance": Operation(lockers_maintenance, ("locker.maintenance",)),
}
"""Each mutating route and command, performed: "METHOD /path" or "proveniq command", with
an optional " [variant]" when one needs more than one scenario."""

NOT_AUDITED: dict[str, str] = {
    "POST /sim/faults": "simulator control: the fault rules live in the simulated fleet's "
    "memory; no ledger row changes",
    "DELETE /sim/faults": "simulator control: clears the simulated fleet's fault rules",
    "POST /api/ops/circuits/{name}/reset": "a breaker lives in the process's memory; a reset "
    "is logged with the key that asked, since the database may be why the circuit opened",
    "proveniq circuits reset": "calls POST /api/ops/circuits/{name}/reset",
    "POST /api/reviews/{review_id}/claim": "a reviewer's hold on a review while working it: "
    "an expiring lease that keeps two reviewers off one item, no change to the asset or the "
    "review's outcome; the decision it precedes is audited",
    "DELETE /api/reviews/{review_id}/claim": "gives that hold back before it expires",
    "POST /console/login": "opens a console session (console_sessions: the key's sign-in, not "
    "ledger state); the key itself was audited when created",
    "POST /console/logout": "deletes the console session",
    "POST /console/reviews/{review_id}/claim": "renews the reviewer's hold, as POST "
    "/api/reviews/{review_id}/claim",
    "POST /console/reviews/{review_id}/release": "gives the hold back, as DELETE "
    "/api/reviews/{review_id}/claim",
    "POST /console/ops/circuits/{name}/reset": "as POST /api/ops/circuits/{name}/reset: a "
    "breaker lives in the process's memory",
    "proveniq audit checkpoint": "signs the sealed audit chain's head: its row "
    "(audit_checkpoints) and event are the audit trail's own attestation, as sealing is",
    "proveniq audit verify": "seals the audit trail itself: gives unsealed rows their place in "
    "the hash chain, the one update audit_log accepts",
    "proveniq migrate": "schema changes, each recorded in schema_migrations; no ledger row",
    "proveniq serve": "runs the service: its own writes at start (the bootstrap key, the "
    "embedded fleet's lockers) go through keys.create_key and assets.register_locker, "
    "audited as 'proveniq keys create' and 'POST /api/lockers' are",
    "proveniq simulate": "virtual lockers on a broker; it opens no database",
    "proveniq demo": "a client of the HTTP API (POST /api/assets, /sim/faults, retry-link: "
    "covered here); its outage step only closes the database to new connections",
}
"""Mutating routes and commands without an audit row of their own, each with the reason."""

CONSOLE: dict[str, str] = {
    "POST /console/reviews/{review_id}/decide": "POST /api/reviews/{review_id}/decision",
    "POST /console/ops/retry-queue/{entry_id}/retry": "POST /api/ops/retry-queue/{entry_id}/retry",
    "POST /console/ops/retry-queue/{entry_id}/discard": (
        "POST /api/ops/retry-queue/{entry_id}/discard"
    ),
    "POST /console/ops/retry-queue/retry-exhausted": "POST /api/ops/retry-queue/retry-exhausted",
    "POST /console/ops/assets/{asset_id}/retry-link": "POST /api/ops/assets/{asset_id}/retry-link",
    "POST /console/ops/assets/{asset_id}/cancel": "POST /api/ops/assets/{asset_id}/cancel",
    "POST /console/ops/lockers/{locker_ref}/maintenance": (
        "POST /api/ops/lockers/{locker_ref}/maintenance"
    ),
    "POST /console/ops/alerts/{alert_id}/acknowledge": (
        "POST /api/ops/alerts/{alert_id}/acknowledge"
    ),
    "POST /console/ops/alerts/{alert_id}/resolve": "POST /api/ops/alerts/{alert_id}/resolve",
    "POST /console/ops/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver": (
        "POST /api/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver"
    ),
    "POST /console/ops/webhooks/{webhook_id}/enable": "POST /api/webhooks/{webhook_id}/enable",
}
"""The console's form routes (not in the OpenAPI document), each with the API route whose
operator function it calls under the signed-in key's name: performed there."""

READ_ONLY: dict[str, Callable[[World], tuple[str, ...]]] = {
    "proveniq keys list": lambda w: ("keys", "list"),
    "proveniq sagas list": lambda w: ("sagas", "list"),
    "proveniq sagas show": lambda w: ("sagas", "show", w.notes["saga_id"]),
    "proveniq dlq list": lambda w: ("dlq", "list"),
    "proveniq dlq show": lambda w: ("dlq", "show", w.notes["entry_id"]),
    "proveniq circuits": lambda w: ("circuits",),
}
"""The CLI's commands that only read, with their arguments; shown here to change no row."""


def base(name: str) -> str:
    """The route or command an OPERATIONS key names, without its variant."""
    return name.split(" [", 1)[0]


def openapi_mutations() -> set[str]:
    """Every mutating operation in the app's OpenAPI document, as "METHOD /path"."""
    document = create_app(None).openapi()
    return {
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method in item
        if method.upper() in MUTATING
    }


def hidden_mutations() -> set[str]:
    """Every mutating route the OpenAPI document leaves out (the console's forms)."""
    found: set[str] = set()

    def walk(routes: list[Any]) -> None:
        for route in routes:
            if isinstance(route, APIRoute):
                if not route.include_in_schema:
                    found.update(f"{m} {route.path}" for m in route.methods or () if m in MUTATING)
                continue
            included = getattr(route, "original_router", None)  # FastAPI's included router
            walk(list(getattr(included or route, "routes", [])))

    app: FastAPI = create_app(None)
    walk(list(app.routes))
    return found


def cli_commands() -> set[str]:
    """Every CLI command, as "proveniq group command"; a group that acts itself counts."""
    found: set[str] = set()

    def walk(command: Any, path: tuple[str, ...]) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands is None or (path and command.invoke_without_command):
            found.add(" ".join(("proveniq", *path)))
        for name, sub in (subcommands or {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(cli_app), ())
    return found


def test_every_mutating_route_and_command_is_listed() -> None:
    """The OpenAPI document's mutating routes and the CLI's commands are each performed
    here (OPERATIONS), read only (READ_ONLY) or not audited for a stated reason
    (NOT_AUDITED); none is missing, none listed twice, none listed that no longer exists."""
    everything = openapi_mutations() | hidden_mutations() | cli_commands()
    performed = {base(name) for name in OPERATIONS}
    lists = (performed, set(NOT_AUDITED), set(READ_ONLY), set(CONSOLE))
    missing = everything - set().union(*lists)
    assert not missing, (
        f"{sorted(missing)} change state without being covered: add each to OPERATIONS "
        "(how to perform it, the audit actions it writes) or to NOT_AUDITED with the reason "
        "it has no audit row (READ_ONLY for a command that only reads)"
    )
    assert set().union(*lists) <= everything, "listed but gone: " + str(
        sorted(set().union(*lists) - everything)
    )
    assert sum(len(names) for names in lists) == len(set().union(*lists)), "listed twice"
    assert all(reason.strip() for reason in NOT_AUDITED.values())
    assert all(op.actions for op in OPERATIONS.values())
    assert set(CONSOLE.values()) <= performed, "a console route's API twin is not performed"
    assert any(r.startswith("POST /console/") for r in hidden_mutations())


# -- running a Core and performing operations ------------------------------------------------


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # leave pytest's signal handlers alone
        yield


@pytest_asyncio.fixture
async def world(database_url: str, mqtt_url: str, tmp_path: Path) -> AsyncIterator[World]:
    """A Core of role api on the probed test database, served on a port (webhooks may go to
    this host: the tests' endpoints are loopback addresses)."""
    await audit_probe.install(database_url)
    async with core_running(
        database_url, mqtt_url, tmp_path, role="api", webhook_allow_private=True
    ) as core:
        port = free_port()
        config = uvicorn.Config(
            create_app(core), port=port, log_config=None, access_log=False, lifespan="off"
        )
        server = _Server(config)
        task = asyncio.create_task(server.serve())
        while not server.started:  # uvicorn has no started event
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.02)
        key = await keys.create_key(core.pool, TENANT, keys.SCOPES, name=OPERATOR)
        url = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient(
                base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60
            ) as http:
                yield World(core, url, key, http, database_url, tmp_path)
        finally:
            server.should_exit = True
            await task


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    detail: str
    request_id: str | None = None


async def perform(w: World, call: Call) -> Outcome:
    """Send the request, or run the command as an operator would (``python -m``)."""
    if not call.args:
        response = await w.http.request(call.method, call.path, json=call.body)
        if response.status_code >= 400:
            error = response.json()["error"]  # the envelope, whatever went wrong
            assert {"code", "message", "severity", "retryable", "requestId"} <= set(error)
        request_id = response.headers.get("x-request-id")
        return Outcome(response.status_code < 400, response.text, request_id)
    env = os.environ | {
        "PROVENIQ_URL": w.url,
        "PROVENIQ_API_KEY": w.key,
        "PROVENIQ_DATABASE_URL": w.database_url,
        "PROVENIQ_HOME": str(w.home),
        "COLUMNS": "250",
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "proveniq_core", *call.args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Outcome(done.returncode == 0, done.stdout + done.stderr)


@pytest.mark.parametrize("name", sorted(OPERATIONS))
async def test_change_commits_with_its_audit_row(world: World, name: str) -> None:
    """The operation's every ledger change commits in a transaction that also writes its
    audit row, with the actions listed for it under the caller's identity; with the audit
    insert failing it fails cleanly and commits no ledger row."""
    op = OPERATIONS[name]
    call = await op.prepare(world)

    await audit_probe.arm(world.database_url)
    start = await audit_probe.mark(world.database_url)
    refused = await perform(world, call)
    committed = await audit_probe.changes_since(world.database_url, start)
    await audit_probe.disarm(world.database_url)
    assert not refused.ok, refused.detail
    assert audit_probe.state_changes(committed) == []

    start = await audit_probe.mark(world.database_url)
    outcome = await perform(world, call)
    assert outcome.ok, outcome.detail
    changes = await audit_probe.changes_since(world.database_url, start)
    assert audit_probe.state_changes(changes), "it changed no ledger row"
    assert audit_probe.unaudited(changes) == []
    written = audit_probe.audit_rows(changes)
    actor = op.actor or world.actor
    for action in op.actions:
        mine = [a for a in written if a["action"] == action and a["actor"] == actor]
        assert mine, f"no {action} audit row by {actor} in {written}"
        if outcome.request_id is not None:
            assert {a["request_id"] for a in mine} == {outcome.request_id}


async def test_read_only_commands_and_unaudited_routes_change_no_row(world: World) -> None:
    """The CLI's read-only commands, and the unaudited routes that can run here (simulator
    faults, a circuit reset), leave every table as it was."""
    asset_id, entry_id = await held_pending(world)
    asset = await ok(world.http.get(f"/api/assets/{asset_id}"))
    world.notes |= {"entry_id": entry_id, "saga_id": asset["sagaId"]}
    calls = [Call(args=args(world)) for args in READ_ONLY.values()] + [
        Call("POST", "/sim/faults", {"lockerRef": world.ref, "fault": "hardware_fault"}),
        Call("DELETE", "/sim/faults"),
        Call("POST", "/api/ops/circuits/ledger/reset"),
    ]
    for call in calls:
        start = await audit_probe.mark(world.database_url)
        outcome = await perform(world, call)
        assert outcome.ok, outcome.detail
        changed = await audit_probe.changes_since(world.database_url, start)
        # Devices on the shared broker report their presence whenever: not this call's doing.
        assert [c for c in changed if c.tbl != "locker_presence"] == [], call
