"""Bearer API keys: 401 without a valid key, 403 without the scope.

While the database is down, a key it verified in the last few minutes still authenticates
(``keys.KeyCache``), so routes that need no database (the circuits) keep answering and the
others answer 503 ``E_LEDGER_DOWN`` rather than 401."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request

from proveniq_core.api.deps import CoreDep
from proveniq_core.api.limits import AUTHENTICATED
from proveniq_core.errors import ForbiddenError, UnauthorizedError
from proveniq_core.ledger import keys
from proveniq_core.ledger.keys import Principal
from proveniq_core.service import Core


def require(scope: str) -> Callable[[Request, Core], Awaitable[Principal]]:
    """A dependency that authenticates the caller and checks ``scope``."""

    async def dependency(request: Request, core: CoreDep) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthorizedError("Missing API key: send 'Authorization: Bearer pk_…'.")
        token = token.strip()
        checked = getattr(request.state, AUTHENTICATED, None)  # by the limits, before the body
        principal: Principal | None
        if checked is not None and checked[0] == token:
            principal = checked[1]
        else:
            principal = await keys.authenticate(core.pool, token, core.key_cache)
        if principal is None:
            raise UnauthorizedError("Invalid or revoked API key.")
        if scope not in principal.scopes:
            raise ForbiddenError(f"This API key lacks the scope {scope!r}.")
        request.state.principal = principal
        return principal

    dependency.__name__ = f"require_{scope.replace(':', '_')}"
    return dependency
