"""An unexpected exception in a route, through a real uvicorn server: a 500 in the envelope
with its request id, on a connection that stays open."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from proveniq_core.api.app import create_app
from proveniq_core.embedded import free_port
from proveniq_core.ledger import keys
from proveniq_core.service import Core
from proveniq_core.webhooks import endpoints
from tests.integration.conftest import TENANT


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # leave pytest's signal handlers alone
        yield


@contextlib.asynccontextmanager
async def serving(core: Core) -> AsyncIterator[str]:
    """The app of ``core`` on a real port; its base URL."""
    port = free_port()
    config = uvicorn.Config(
        create_app(core), port=port, log_config=None, access_log=False, lifespan="off"
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:  # uvicorn has no started event
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_an_unexpected_error_is_a_500_with_its_request_id_on_an_open_connection(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A route failing with an exception nobody expected answers 500 E_INTERNAL in the
    envelope, with X-Request-ID equal to the envelope's requestId, and the server keeps the
    connection: the next request on it works."""

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(endpoints, "get", broken)
    key = await keys.create_key(core.pool, TENANT, keys.SCOPES, name="errors")
    connects: list[str] = []

    async def trace(event: str, info: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.started":
            connects.append(event)

    async with (
        serving(core) as url,
        httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http,
    ):
        failed = await http.get(
            "/api/webhooks/7d9f4b8e-0000-4000-8000-000000000001",
            headers={"X-Request-ID": "req-unexpected-1"},
            extensions={"trace": trace},
        )
        after = await http.get("/api/webhooks", extensions={"trace": trace})

    assert failed.status_code == 500
    error = failed.json()["error"]
    assert error["code"] == "E_INTERNAL"
    assert "a bug" not in failed.text
    assert failed.headers["X-Request-ID"] == error["requestId"] == "req-unexpected-1"
    assert failed.headers.get("connection") != "close"
    assert after.status_code == 200
    assert len(connects) == 1, "the server closed the connection after a 500"
