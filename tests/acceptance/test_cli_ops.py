"""The operator commands that act through the HTTP API (dlq, assets, lockers, circuits), run
as ``python -m proveniq_core`` subprocesses against a Core served by uvicorn in the test."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest_asyncio
import uvicorn

from proveniq_core.api.app import create_app
from proveniq_core.embedded import free_port
from proveniq_core.ledger import keys
from proveniq_core.service import Core
from tests.integration.conftest import TENANT, core_running, first_ref

LINKED = ("linked", "verified")  # the verify worker may have verified a linked asset already


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # leave pytest's signal handlers alone
        yield


@pytest_asyncio.fixture
async def service(
    database_url: str, mqtt_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Core, str, str]]:
    """A running Core on a real port: the core, its URL and an admin key of TENANT."""
    async with core_running(database_url, mqtt_url, tmp_path) as core:
        port = free_port()
        config = uvicorn.Config(
            create_app(core), port=port, log_config=None, access_log=False, lifespan="off"
        )
        server = _Server(config)
        task = asyncio.create_task(server.serve())
        while not server.started:  # uvicorn has no started event
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.02)
        key = await keys.create_key(core.pool, TENANT, keys.SCOPES, name="operator")
        try:
            yield core, f"http://127.0.0.1:{port}", key
        finally:
            server.should_exit = True
            await task


async def proveniq(
    url: str, key: str, *args: str, columns: int = 250
) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a thread, so this event loop keeps serving its requests."""
    env = {**os.environ, "PROVENIQ_URL": url, "PROVENIQ_API_KEY": key, "COLUMNS": str(columns)}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "proveniq_core", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def rows(stdout: str) -> list[list[str]]:
    return [cells for cells in map(str.split, stdout.splitlines()) if cells]


async def test_maintenance_and_dlq_list_through_the_service(
    service: tuple[Core, str, str],
) -> None:
    """lockers maintenance defers a registration; dlq list shows its entry; --end retries it
    and dlq list --json then shows it resolved."""
    core, url, key = service
    ref = first_ref(core)
    until = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    started = await proveniq(url, key, "lockers", "maintenance", ref, "--until", until.isoformat())
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == f"{ref} in maintenance until {until:%Y-%m-%d %H:%M:%S}Z"

    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
        body = {"name": "Watch", "category": "watch", "lockerRef": ref}
        deferred = await http.post("/api/assets", json=body)
        assert deferred.status_code == 202, deferred.text
        asset_id = deferred.json()["assetId"]

        listed = await proveniq(url, key, "dlq", "list")
        assert listed.returncode == 0, listed.stderr
        [entry] = [cells for cells in rows(listed.stdout) if asset_id in cells]
        assert entry[1:5] == [asset_id, ref, "pending", "0"]
        assert entry[-1] == "E_LOCKER_UNREACHABLE"

        ended = await proveniq(url, key, "lockers", "maintenance", ref, "--end")
        assert ended.returncode == 0, ended.stderr
        assert "1 deferred link(s) retried now" in ended.stdout
        deadline = time.monotonic() + 10
        while (await http.get(f"/api/assets/{asset_id}")).json()["status"] not in LINKED:
            assert time.monotonic() < deadline, "not linked after maintenance ended"
            await asyncio.sleep(0.05)

    resolved = await proveniq(url, key, "dlq", "list", "--status", "resolved", "--json")
    assert resolved.returncode == 0, resolved.stderr
    [item] = json.loads(resolved.stdout)
    assert (item["id"], item["assetId"], item["status"]) == (entry[0], asset_id, "resolved")

    neither = await proveniq(url, key, "lockers", "maintenance", ref)
    assert neither.returncode == 2
    assert "--until TIME or --end" in neither.stderr


async def test_retry_link_cancel_and_circuits_through_the_service(
    service: tuple[Core, str, str],
) -> None:
    """assets retry-link reports link_failed while the locker faults and linked once it is
    cleared; an error answer prints its code and message and exits 1; circuits lists and
    resets the locker's breaker."""
    core, url, key = service
    ref = first_ref(core)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
        fault = {"lockerRef": ref, "fault": "hardware_fault"}
        assert (await http.post("/sim/faults", json=fault)).status_code == 201
        body = {"name": "Watch", "category": "watch", "lockerRef": ref}
        refused = await http.post("/api/assets", json=body)
        assert refused.status_code == 502, refused.text
        asset_id = refused.json()["error"]["assetId"]

        again = await proveniq(url, key, "assets", "retry-link", asset_id)
        assert again.returncode == 0, again.stderr
        assert f"asset {asset_id}: link_failed; last error E_LOCKER_HARDWARE" in again.stdout

        assert (await http.delete("/sim/faults")).status_code == 200
        linked = await proveniq(url, key, "assets", "retry-link", asset_id, "--json")
        assert linked.returncode == 0, linked.stderr
        assert json.loads(linked.stdout)["status"] in LINKED

    refused_cancel = await proveniq(url, key, "assets", "cancel", asset_id)
    assert refused_cancel.returncode == 1
    assert f"error 409 E_CONFLICT: asset {asset_id} is " in refused_cancel.stderr
    assert "only a pending_link or link_failed asset can be cancelled" in refused_cancel.stderr
    unauthorized = await proveniq(url, "pk_nobody_nothing", "dlq", "list")
    assert unauthorized.returncode == 1
    assert "error 401 E_UNAUTHORIZED" in unauthorized.stderr

    circuits = await proveniq(url, key, "circuits")
    assert circuits.returncode == 0, circuits.stderr
    assert [f"locker:{ref}", "closed", "0"] in [cells[:3] for cells in rows(circuits.stdout)]
    reset = await proveniq(url, key, "circuits", "reset", f"locker:{ref}")
    assert reset.returncode == 0, reset.stderr
    assert reset.stdout.strip() == f"circuit locker:{ref}: closed"
    unknown = await proveniq(url, key, "circuits", "reset", "locker:nowhere")
    assert unknown.returncode == 1
    assert "E_NOT_FOUND" in unknown.stderr


async def test_dlq_list_prints_whole_ids_in_80_columns(service: tuple[Core, str, str]) -> None:
    """COLUMNS=80 dlq list keeps every entry id whole (fewer columns, none cut, no line
    wider than 80) and says what it left out; --json on list and show has everything."""
    core, url, key = service
    ref = first_ref(core)
    until = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    started = await proveniq(url, key, "lockers", "maintenance", ref, "--until", until.isoformat())
    assert started.returncode == 0, started.stderr
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
        for name in ("Watch", "Ring"):
            body = {"name": name, "category": "watch", "lockerRef": ref}
            assert (await http.post("/api/assets", json=body)).status_code == 202

    as_json = await proveniq(url, key, "dlq", "list", "--json")
    assert as_json.returncode == 0, as_json.stderr
    entries = json.loads(as_json.stdout)
    assert len(entries) == 2

    narrow = await proveniq(url, key, "dlq", "list", columns=80)
    assert narrow.returncode == 0, narrow.stderr
    assert "…" not in narrow.stdout
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 80
    listed = {cells[0]: cells for cells in rows(narrow.stdout)}
    for entry in entries:
        assert listed[entry["id"]][1:] == ["pending", "E_LOCKER_UNREACHABLE"]
    assert "left out to fit 80 columns" in narrow.stderr

    shown = await proveniq(url, key, "dlq", "show", entries[0]["id"], "--json", columns=80)
    assert shown.returncode == 0, shown.stderr
    entry = json.loads(shown.stdout)
    assert (entry["id"], entry["assetId"], entry["status"]) == (
        entries[0]["id"],
        entries[0]["assetId"],
        "pending",
    )
    assert (await proveniq(url, key, "lockers", "maintenance", ref, "--end")).returncode == 0
