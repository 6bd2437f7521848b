"""The typed edge from a route to the running Core: declare ``core: CoreDep``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from proveniq_core.service import Core


async def get_core(request: Request) -> Core:
    """The Core the app was built around (``create_app``). A coroutine, though it awaits
    nothing: FastAPI runs a plain function dependency in a worker thread, on every request."""
    core: Core | None = request.app.state.core
    if core is None:  # an app built for its OpenAPI document alone serves no request
        raise RuntimeError("this app was built without a Core")
    return core


CoreDep = Annotated[Core, Depends(get_core)]
"""The running Core: its pool, gateway, saga engine, retry queue, breakers, evidence store."""
