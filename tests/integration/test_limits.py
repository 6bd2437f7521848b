"""Request limits on a running Core: body size (413), authentication before the body (401),
rate limits (429 with Retry-After) through the app, and the header limit (431) through uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from proveniq_core.api.app import create_app
from proveniq_core.api.limits import server_config
from proveniq_core.ledger import keys
from proveniq_core.service import Core
from tests.integration.conftest import TENANT, core_running, first_ref

MIB = 1 << 20


class Chunks:
    """A request body of ``total`` bytes in 64 KiB chunks that counts how many were read."""

    def __init__(self, total: int) -> None:
        self.total, self.read = total, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        sent = 0
        while sent < self.total:
            self.read += 1
            chunk = b"x" * min(64 * 1024, self.total - sent)
            sent += len(chunk)
            yield chunk


def app_client(core: Core, key: str | None = None, app: Any = None) -> httpx.AsyncClient:
    """A client of ``app`` (a new app of ``core`` if None: limits are per app)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    transport = httpx.ASGITransport(app=app or create_app(core))
    return httpx.AsyncClient(transport=transport, base_url="http://core.test", headers=headers)


def assert_envelope(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code and error["requestId"] == response.headers["x-request-id"]
    return error


async def test_a_body_over_the_limit_is_refused_without_reading_it(
    core: Core, api_key: str
) -> None:
    """Content-Length over 1 MiB: 413 before a chunk is read; a chunked body is cut at the
    limit, having read about 1 MiB of its 50 MB."""
    async with app_client(core, api_key) as http:
        declared = Chunks(2 * MIB)
        big = await http.post(
            "/api/assets",
            content=declared,
            headers={"Content-Length": str(2 * MIB), "Content-Type": "application/json"},
        )
        assert_envelope(big, 413, "E_PAYLOAD_TOO_LARGE")
        assert declared.read == 0

        streamed = Chunks(50 * MIB)
        cut = await http.post(
            "/api/assets", content=streamed, headers={"Content-Type": "application/json"}
        )
        assert_envelope(cut, 413, "E_PAYLOAD_TOO_LARGE")
        assert streamed.read <= 17  # 1 MiB in 64 KiB chunks, and the one that passed it

        small = await http.post(
            "/api/assets", json={"name": "Rolex", "category": "watch", "lockerRef": "nowhere"}
        )
        assert small.status_code == 422  # within the limit: the route answers


async def test_a_bad_key_is_refused_before_its_body_is_read(core: Core) -> None:
    """No key or a wrong one with a 50 MB body: 401 with WWW-Authenticate, nothing read."""
    for key in (None, "pk_nope_wrong"):
        body = Chunks(50 * MIB)
        async with app_client(core, key) as http:
            refused = await http.post(
                "/api/assets", content=body, headers={"Content-Length": str(50 * MIB)}
            )
        assert_envelope(refused, 401, "E_UNAUTHORIZED")
        assert refused.headers["www-authenticate"] == "Bearer"
        assert body.read == 0


async def test_a_request_with_a_body_asks_the_database_for_its_key_once(
    core: Core, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key checked before the body is the one the route uses: one lookup per request,
    and a key that lacks the route's scope is still refused (403) after that one lookup."""
    asked: list[str] = []
    real = keys.authenticate

    async def counted(pool: Any, token: str, cache: Any = None) -> Any:
        asked.append(token)
        return await real(pool, token, cache)

    monkeypatch.setattr(keys, "authenticate", counted)
    body = {"name": "Omega Speedmaster", "category": "watch", "lockerRef": first_ref(core)}
    async with app_client(core, api_key) as http:
        created = await http.post("/api/assets", json=body)
    assert created.status_code == 201, created.text
    assert asked == [api_key]

    reader = await keys.create_key(core.pool, TENANT, ["assets:read"], name="reader")
    asked.clear()
    async with app_client(core, reader) as http:
        refused = await http.post("/api/assets", json=body)
    assert_envelope(refused, 403, "E_FORBIDDEN")
    assert asked == [reader]


@asynccontextmanager
async def limited_core(
    database_url: str, mqtt_url: str, home: Path, **limits: float
) -> AsyncIterator[Core]:
    settings: dict[str, float] = {
        "rate_limit_per_ip": 0,
        "rate_limit_per_key": 0,
        "rate_limit_auth_failures_per_ip": 0,
        "rate_limit_burst": 3,
    }
    async with core_running(database_url, mqtt_url, home, **(settings | limits)) as core:
        yield core


async def test_the_client_address_is_rate_limited_but_not_the_probes(
    database_url: str, mqtt_url: str, tmp_path: Path
) -> None:
    """1 request/s per address with a 3 s burst: the 4th is 429 with Retry-After; /healthz,
    /readyz and /metrics still answer."""
    async with limited_core(database_url, mqtt_url, tmp_path, rate_limit_per_ip=1) as core:
        key = await keys.create_key(core.pool, TENANT, ["assets:read"])
        async with app_client(core, key) as http:
            assert [(await http.get("/api/lockers")).status_code for _ in range(3)] == [200] * 3
            limited = await http.get("/api/lockers")
            error = assert_envelope(limited, 429, "E_RATE_LIMITED")
            assert error["retryable"] is True
            assert int(limited.headers["retry-after"]) >= 1
            for path in ("/healthz", "/readyz", "/metrics"):
                assert (await http.get(path)).status_code == 200


async def test_each_key_has_its_own_rate_limit(
    database_url: str, mqtt_url: str, tmp_path: Path
) -> None:
    """A key past its limit gets 429; another key from the same address still gets through."""
    async with limited_core(database_url, mqtt_url, tmp_path, rate_limit_per_key=1) as core:
        one = await keys.create_key(core.pool, TENANT, ["assets:read"])
        two = await keys.create_key(core.pool, TENANT, ["assets:read"])
        app = create_app(core)
        async with app_client(core, one, app) as first, app_client(core, two, app) as second:
            assert [(await first.get("/api/lockers")).status_code for _ in range(4)] == [
                200,
                200,
                200,
                429,
            ]
            assert (await second.get("/api/lockers")).status_code == 200


async def test_failed_authentications_are_rate_limited_per_address(
    database_url: str, mqtt_url: str, tmp_path: Path
) -> None:
    """After a burst of 401s the address gets 429, even with a good key, until it refills."""
    async with limited_core(
        database_url, mqtt_url, tmp_path, rate_limit_auth_failures_per_ip=1
    ) as core:
        good = await keys.create_key(core.pool, TENANT, ["assets:read"])
        app = create_app(core)
        async with (
            app_client(core, "pk_bad_guess", app) as bad,
            app_client(core, good, app) as http,
        ):
            statuses = [(await bad.get("/api/lockers")).status_code for _ in range(4)]
            assert statuses == [401, 401, 401, 429]
            assert_envelope(await http.get("/api/lockers"), 429, "E_RATE_LIMITED")


@asynccontextmanager
async def served(core: Core) -> AsyncIterator[int]:
    """The app of ``core`` on a real uvicorn as ``serve`` runs it; yields the port."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = server_config(create_app(core), core.settings, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), "the server stopped while starting"
            await asyncio.sleep(0.02)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task
        sock.close()


async def raw_request(port: int, head: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``head`` (request line and headers) alone while reading the whole answer; the
    server may close before it has read everything (then the writing stops)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def write() -> None:
        with contextlib.suppress(ConnectionError):
            for start in range(0, len(head), 16 * 1024):
                writer.write(head[start : start + 16 * 1024])
                await writer.drain()

    sending = asyncio.create_task(write())
    answer = b""
    try:
        async with asyncio.timeout(10):
            while chunk := await reader.read(65536):
                answer += chunk
    except ConnectionError:
        pass  # what arrived before the reset is the answer
    finally:
        await sending
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    header_block, _, body = rest.partition(b"\r\n\r\n")
    headers = {}
    for line in header_block.split(b"\r\n"):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


async def test_uvicorn_refuses_large_headers_with_431(core: Core, api_key: str) -> None:
    """A 1 MB header is answered 431 in the envelope; normal requests are served."""
    async with served(core) as port:
        status, _, body = await raw_request(
            port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * MIB + b"\r\n\r\n"
        )
        assert status == 431
        assert json.loads(body)["error"]["code"] == "E_HEADERS_TOO_LARGE"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            assert (await http.get("/healthz")).status_code == 200
            listed = await http.get("/api/lockers", headers={"Authorization": f"Bearer {api_key}"})
            assert listed.status_code == 200


async def test_uvicorn_answers_a_bad_key_before_the_body_arrives(core: Core) -> None:
    """Over a real socket: headers announcing 50 MB with a bad key get 401 with no body sent."""
    async with served(core) as port:
        status, headers, body = await raw_request(
            port,
            b"POST /api/assets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer pk_no_no\r\n"
            b"Content-Type: application/json\r\nContent-Length: 52428800\r\n\r\n",
        )
    assert status == 401
    assert headers["www-authenticate"] == "Bearer"
    assert json.loads(body)["error"]["code"] == "E_UNAUTHORIZED"
