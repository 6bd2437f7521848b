"""``Idempotency-Key`` on POST routes (DESIGN.md §3, Stripe semantics).

A key is the tenant's: one row per ``(tenant, key)`` in ``idempotency_keys``, bound to the
route (method and path) and to a SHA-256 of the canonical JSON body of the request that
first used it. For 24 h from that request:

- same route and body, first request finished: its stored response again (status, body
  bytes, the headers in ``REPLAYED_HEADERS``) with ``Idempotent-Replayed: true``;
- different route or body: 422 ``E_IDEMPOTENCY_MISMATCH``;
- first request still running: 409 ``E_IDEMPOTENCY_IN_FLIGHT`` (retryable).

A route whose answer holds a secret (a new webhook's signing secret) passes a ``Sealer``:
its stored response body is sealed with the key that seals those secrets at rest, and
opened again for the replay.

What is stored: every response the handler produced, success or 5xx, raised ``CoreError``
(answered with the app's envelope) or unexpected exception (500 ``E_INTERNAL``) alike,
except 4xx: a 4xx says the request was refused and nothing was done, so nothing is stored
and a retry with the same key runs the handler again. A handler must keep that contract:
once it has changed state, it answers 2xx or 5xx. Requests refused before the handler
(authentication, body validation, a malformed key, a mismatch, a key in flight, the
database down while claiming the key) store nothing either.

A dead process cannot hold a key: the in-flight row has a lease (``LEASE_SECONDS``) that
the running request renews; once it lapses, a request with the same route and body takes
the row over and runs the handler, and the old owner's late result is not stored (the
row's ``token`` fences it). If the response cannot be stored (database down), the client
still gets it; the row stays in flight until its lease lapses, and a retry after that runs
the handler again: exactly-once holds only as far as the response could be recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Final, Protocol

import structlog
from fastapi import Header, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from proveniq_core import db
from proveniq_core.api.envelope import envelope, error_response
from proveniq_core.errors import (
    CoreError,
    IdempotencyInFlightError,
    IdempotencyMismatchError,
    ValidationFailedError,
)

log = structlog.get_logger(__name__)

HEADER: Final = "Idempotency-Key"
REPLAYED: Final = "Idempotent-Replayed"
MAX_KEY_LENGTH: Final = 255
TTL_SECONDS: Final = 24 * 3600.0
LEASE_SECONDS: Final = 60.0
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=HEADER,
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        description="a retry with the same key and body gets the first answer again (24 h)",
    ),
]
"""The header as a route parameter: documents it in the OpenAPI schema (``run_idempotent``
reads it from the request)."""
# The response headers a replay repeats; X-Request-ID is the replaying request's own.
REPLAYED_HEADERS: Final = frozenset({"content-type", "location", "retry-after", "etag"})
PURGE_PROBABILITY: Final = 0.01  # a stored response purges a batch of expired rows this often
PURGE_BATCH: Final = 500


_CLAIM_ATTEMPTS: Final = 3


class Sealer(Protocol):
    """Seals a stored response body, and opens it again (bytes it did not seal as they are)."""

    def seal_bytes(self, plain: bytes) -> bytes: ...

    def open_bytes(self, stored: bytes) -> bytes: ...


def request_hash(body: Any) -> bytes:
    """SHA-256 of the canonical JSON of ``body``: sorted keys, no spaces, ASCII escapes."""
    canonical = json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str
    )
    return hashlib.sha256(canonical.encode("ascii")).digest()


def _key(request: Request) -> str | None:
    key = request.headers.get(HEADER)
    if key is not None and not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise ValidationFailedError(
            f"The {HEADER} header must be 1 to {MAX_KEY_LENGTH} characters.",
            details={"field": HEADER, "maxLength": MAX_KEY_LENGTH},
        )
    return key


def _replay(row: db.Row, sealer: Sealer | None) -> Response:
    headers = dict(row["response_headers"])
    headers[REPLAYED] = "true"
    content = bytes(row["response_body"])
    if sealer is not None:
        content = sealer.open_bytes(content)
    return Response(content=content, status_code=row["response_status"], headers=headers)


async def run_idempotent(
    request: Request,
    pool: db.Pool,
    *,
    tenant_id: str,
    body: Any,
    handler: Callable[[], Awaitable[Response]],
    lease: float = LEASE_SECONDS,
    sealer: Sealer | None = None,
) -> Response:
    """Run ``handler`` at most once per ``Idempotency-Key``; answer retries from the store.

    Without the header, just ``await handler()``. ``body`` is the request body as JSON
    values (e.g. ``model.model_dump(mode="json")``). ``handler`` must return a response with
    its body in memory (``JSONResponse``, not streaming); a ``CoreError`` it raises becomes
    the app's error envelope here, so that it can be stored. ``lease`` (seconds) bounds how
    long a key stays blocked by a process that died mid-request; ``sealer`` seals the
    stored body (an answer holding a secret).

    Raises ``ValidationFailedError`` (malformed key), ``IdempotencyMismatchError``,
    ``IdempotencyInFlightError`` and, while claiming the key, ``LedgerDownError``.
    """
    key = _key(request)
    if key is None:
        return await handler()
    route = f"{request.method} {request.url.path}"
    params: dict[str, Any] = {
        "tenant_id": tenant_id,
        "key": key,
        "route": route,
        "request_hash": request_hash(body),
        "token": uuid.uuid4(),
        "lease": lease,
        "ttl": TTL_SECONDS,
    }
    for _ in range(_CLAIM_ATTEMPTS):
        async with db.connection(pool) as conn:
            claimed = await db.fetch_one(conn, "idempotency_claim", params)
            if claimed is not None:
                break
            row = await db.fetch_one(conn, "idempotency_lookup", params)
        if row is None or row["expired"]:
            continue  # released or aged out since the claim: claim again
        if row["route"] != route or bytes(row["request_hash"]) != params["request_hash"]:
            raise IdempotencyMismatchError(
                details={"differs": "route" if row["route"] != route else "body"}
            )
        if row["status"] == "completed":
            log.info("idempotent_replay", key=key, status=row["response_status"])
            return _replay(row, sealer)
        if not row["lease_lapsed"]:
            raise IdempotencyInFlightError()
    else:
        raise IdempotencyInFlightError()  # the row kept changing under us: let the client retry

    keepalive = asyncio.create_task(_keep_leased(pool, params))
    try:
        try:
            response = await handler()
        except CoreError as exc:
            response = error_response(request, exc)
        except Exception:
            log.exception("unhandled_error", idempotency_key=key)
            response = envelope(request, "E_INTERNAL")
    finally:
        # On cancellation the row is left in flight: whether the handler's work committed is
        # unknown, so a retry waits for the lease like after a crash.
        keepalive.cancel()
        await asyncio.wait([keepalive])

    content = getattr(response, "body", None)
    if 400 <= response.status_code < 500 or not isinstance(content, bytes):
        await _settle(pool, "idempotency_release", params)
        if not isinstance(content, bytes):
            raise TypeError(f"{HEADER}: the handler must return a response with a body in memory")
        return response
    headers = {k: v for k, v in response.headers.items() if k in REPLAYED_HEADERS}
    if sealer is not None:
        content = sealer.seal_bytes(content)
    stored = await _settle(
        pool,
        "idempotency_complete",
        params | {"status": response.status_code, "headers": db.jsonb(headers), "body": content},
    )
    if stored and random.random() < PURGE_PROBABILITY:
        with contextlib.suppress(CoreError):
            await purge_expired(pool)
    return response


async def idempotent_model(
    request: Request,
    pool: db.Pool,
    *,
    tenant_id: str,
    body: BaseModel,
    status_code: int,
    make: Callable[[], Awaitable[BaseModel]],
    sealer: Sealer | None = None,
) -> Response:
    """``run_idempotent`` for a route that answers one model with ``status_code``."""

    async def handler() -> Response:
        answer = await make()
        return JSONResponse(answer.model_dump(mode="json"), status_code=status_code)

    return await run_idempotent(
        request,
        pool,
        tenant_id=tenant_id,
        body=body.model_dump(mode="json"),
        handler=handler,
        sealer=sealer,
    )


async def _settle(pool: db.Pool, query: str, params: dict[str, Any]) -> bool:
    """Complete or release the claimed row; ``False`` if it was taken over or the store failed.

    Either way the handler's response still goes to the client: it is what happened.
    """
    try:
        async with db.connection(pool) as conn:
            done = await db.execute(conn, query, params) == 1
    except CoreError as exc:
        log.warning("idempotency_store_failed", key=params["key"], error=exc.code)
        return False
    if not done:
        log.warning("idempotency_key_taken_over", key=params["key"])
    return done


async def _keep_leased(pool: db.Pool, params: dict[str, Any]) -> None:
    """Renew the in-flight lease while the handler runs, three times per lease."""
    while True:
        await asyncio.sleep(params["lease"] / 3)
        try:
            async with db.connection(pool) as conn:
                if await db.execute(conn, "idempotency_renew", params) == 0:
                    return  # taken over (the lease lapsed anyway) or purged
        except CoreError as exc:
            log.warning("idempotency_renew_failed", key=params["key"], error=exc.code)


async def purge_expired(pool: db.Pool, *, limit: int = PURGE_BATCH) -> int:
    """Delete up to ``limit`` keys older than 24 h (they already count as absent)."""
    async with db.connection(pool) as conn:
        return await db.execute(conn, "idempotency_purge", {"ttl": TTL_SECONDS, "limit": limit})


__all__ = [
    "HEADER",
    "LEASE_SECONDS",
    "MAX_KEY_LENGTH",
    "REPLAYED",
    "REPLAYED_HEADERS",
    "TTL_SECONDS",
    "IdempotencyKey",
    "Sealer",
    "idempotent_model",
    "purge_expired",
    "request_hash",
    "run_idempotent",
]
