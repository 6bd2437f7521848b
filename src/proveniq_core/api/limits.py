"""Request limits: body and header sizes, authentication before the body, rate limits.

``Limits`` (plain ASGI, inside the request-id middleware) answers in the error envelope:

- 429 ``E_RATE_LIMITED`` with ``Retry-After`` when the client address, the API key or the
  address's failed authentications exceed their token bucket (``PROVENIQ_RATE_LIMIT_*``).
  The buckets live in this process's memory: with several processes each has its own, so a
  client gets up to that many times the rate.
- 401 before a byte of the body is read, for an ``/api/`` or ``/sim/`` request that sends a
  body without a valid key (a 50 MB body with a bad key costs one key lookup).
- 413 ``E_PAYLOAD_TOO_LARGE`` for a body above ``PROVENIQ_MAX_BODY_BYTES``: at once when
  ``Content-Length`` says so, else while the body streams in, never buffering more.

Headers are limited by the HTTP server itself: ``server_config`` runs uvicorn on h11 (its
httptools parser has no header limit) with ``PROVENIQ_MAX_HEADER_BYTES``, answering 431.
``/metrics``, ``/healthz`` and ``/readyz`` are never rate limited.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import h11
import uvicorn
from fastapi import Request
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from proveniq_core.api.envelope import envelope
from proveniq_core.config import Settings
from proveniq_core.errors import TAXONOMY, CoreError
from proveniq_core.ledger import keys
from proveniq_core.ledger.keys import Principal
from proveniq_core.service import Core

UNLIMITED_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})
_AUTH_BEFORE_BODY = ("/api/", "/sim/")
AUTHENTICATED = "authenticated"
"""The request state key of ``(token, principal)`` when these limits authenticated the key
before the body: the route's ``require`` takes it instead of asking the database again."""
_MAX_CLIENTS = 10_000  # buckets kept per limiter; the least recently used go first


class TokenBucket:
    """``rate`` tokens a second, holding at most ``burst``; a request takes one."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = burst, now

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait(self, now: float) -> float:
        """Seconds until a token is there (0: one is there now); takes nothing."""
        self._refill(now)
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def take(self, now: float) -> float:
        """Take a token if there is one (0.0), else the seconds until there is one."""
        waited = self.wait(now)
        if waited == 0.0:
            self.tokens -= 1
        return waited


class RateLimiter:
    """A token bucket per client key (an address, a key digest); ``rate`` 0: no limit."""

    def __init__(
        self, rate: float, burst_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = max(1.0, rate * burst_seconds)
        self.clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def _bucket(self, key: str) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, self.clock())
            if len(self._buckets) > _MAX_CLIENTS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket

    def take(self, key: str) -> float:
        """Count one request of ``key``: 0.0 if allowed, else the seconds to wait."""
        return 0.0 if self.rate <= 0 else self._bucket(key).take(self.clock())

    def wait(self, key: str) -> float:
        """Seconds until ``key`` may be counted again, without counting."""
        return 0.0 if self.rate <= 0 else self._bucket(key).wait(self.clock())


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` once the body passes the limit (FastAPI re-raises it)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The body is larger than {limit} bytes.")


def bearer(scope: Scope) -> str | None:
    """The token of an ``Authorization: Bearer`` header, if any."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() or None if scheme.lower() == "bearer" else None
    return None


def _header(scope: Scope, wanted: bytes) -> bytes | None:
    return next((v for k, v in scope["headers"] if k == wanted), None)


class Limits:
    """The limits of the module docstring, for the app of ``core``."""

    def __init__(self, app: ASGIApp, core: Core) -> None:
        self.app, self.core = app, core
        settings = core.settings
        self.max_body = settings.max_body_bytes
        burst = settings.rate_limit_burst
        self.per_ip = RateLimiter(settings.rate_limit_per_ip, burst)
        self.per_key = RateLimiter(settings.rate_limit_per_key, burst)
        self.auth_failures = RateLimiter(settings.rate_limit_auth_failures_per_ip, burst)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = client[0] if client else ""
        token = bearer(scope)
        wait = self.auth_failures.wait(address) or self.per_ip.take(address)
        if not wait and token:
            wait = self.per_key.take(hashlib.sha256(token.encode()).hexdigest())
        if wait:
            await self._refuse(scope, receive, send, "E_RATE_LIMITED", retry_after=wait)
            return

        length = _header(scope, b"content-length")
        declared = int(length) if length is not None and length.isdigit() else 0
        has_body = declared > 0 or _header(scope, b"transfer-encoding") is not None
        guarded = has_body and scope["path"].startswith(_AUTH_BEFORE_BODY)
        if guarded:
            authentic, principal = await self._authenticate(token)
            if not authentic:
                self.auth_failures.take(address)
                await self._refuse(scope, receive, send, "E_UNAUTHORIZED")
                return
            if principal is not None:  # the route's auth takes it: one key lookup a request
                scope.setdefault("state", {})[AUTHENTICATED] = (token, principal)
        if declared > self.max_body:
            await self._refuse(scope, receive, send, "E_PAYLOAD_TOO_LARGE")
            return

        received = 0

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        status = 0

        async def watching_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, bounded_receive, watching_send)
        except BodyTooLarge:
            if status:
                raise
            await self._refuse(scope, receive, send, "E_PAYLOAD_TOO_LARGE")
        if status == 401:
            self.auth_failures.take(address)

    async def _authenticate(self, token: str | None) -> tuple[bool, Principal | None]:
        """Whether the route may read the body, and the principal if the database said so."""
        if token is None:
            return False, None
        try:
            principal = await keys.authenticate(self.core.pool, token, self.core.key_cache)
        except CoreError:
            return True, None  # the database cannot say now: the route answers (503, or the cache)
        return principal is not None, principal

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        code: str,
        *,
        retry_after: float | None = None,
    ) -> None:
        headers: dict[str, str] = {}
        message = None
        if retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
        if code == "E_UNAUTHORIZED":  # the envelope adds WWW-Authenticate
            message = "A valid API key is required before the body is read."
        elif code == "E_PAYLOAD_TOO_LARGE":
            message = f"The body is larger than {self.max_body} bytes."
            headers["Connection"] = "close"  # the rest of the body is not read
        response = envelope(Request(scope), code, message=message, headers=headers)
        await response(scope, receive, send)


class _Connection(h11.Connection):
    """An h11 connection that remembers the protocol error it last raised."""

    last_error: h11.RemoteProtocolError | None = None

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            self.last_error = exc
            raise


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, answering headers past the limit with 431 in the envelope."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        size = self.config.h11_max_incomplete_event_size or 16 * 1024  # h11's default
        self.conn = _Connection(h11.SERVER, size)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to any protocol error; 431 when the headers were too large."""
        error = getattr(self.conn, "last_error", None)
        if error is None or error.error_status_hint != 431:
            super().send_400_response(msg)
            return
        mode = TAXONOMY["E_HEADERS_TOO_LARGE"]
        body = {
            "code": mode.code,
            "message": mode.user_message,
            "severity": mode.severity,
            "retryable": mode.retryable,
            "requestId": uuid.uuid4().hex,
        }
        content = json.dumps({"error": body}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(content)).encode()),
            (b"connection", b"close"),
        ]
        self.transport.write(self.conn.send(h11.Response(status_code=431, headers=headers)))
        self.transport.write(self.conn.send(h11.Data(data=content)))
        self.transport.write(self.conn.send(h11.EndOfMessage()))
        self.transport.close()


def server_config(app: ASGIApp, settings: Settings, **kwargs: Any) -> uvicorn.Config:
    """uvicorn's configuration for ``app`` with the header limit of ``settings``."""
    return uvicorn.Config(
        app,
        http=LimitedH11Protocol,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        **kwargs,
    )


__all__ = [
    "UNLIMITED_PATHS",
    "BodyTooLarge",
    "LimitedH11Protocol",
    "Limits",
    "RateLimiter",
    "TokenBucket",
    "server_config",
]
