"""The typed edge from a route to the running Core: declare ``core: CoreDep``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from proveniq_core.service import Core


def get_core(request: Request) -> Core:
    """The Core the app was built around (``create_app``)."""
    core: Core | None = request.app.state.core
    if core is None:  # an app built for its OpenAPI document alone serves no request
        raise RuntimeError("this app was built without a Core")
    return core


CoreDep = Annotated[Core, Depends(get_core)]
"""The running Core: its pool, gateway, saga engine, retry queue, breakers, evidence store."""
