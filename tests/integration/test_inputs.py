"""Bad input answered by validation, in the envelope: NUL and control characters, forged
cursors, a wrong method (405 with Allow), a missing key (401 with WWW-Authenticate)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from proveniq_core.api.app import create_app
from proveniq_core.api.paging import encode_cursor
from proveniq_core.service import Core
from tests.integration.conftest import first_ref


def problem_fields(response: httpx.Response, status: int = 422) -> list[str]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == "E_VALIDATION"
    assert isinstance(error["details"], list)
    return [p["field"] for p in error["details"]]


async def test_nul_characters_are_refused_naming_the_field(
    core: Core, client: httpx.AsyncClient
) -> None:
    """A NUL in a JSON string, a nested key or a query parameter is a 422 on that field, never
    a database error."""
    ref = first_ref(core)
    body = {"name": "Rolex\u0000", "category": "watch", "lockerRef": ref}
    refused = await client.post("/api/assets", json=body)
    assert problem_fields(refused) == ["name"]
    assert "NUL" in refused.json()["error"]["message"]
    assert "E_LEDGER" not in refused.text and "0x00" not in refused.text

    hook = {"url": "https://example.com/h\u0000", "events": ["asset.created"]}
    assert problem_fields(await client.post("/api/webhooks", json=hook)) == ["url"]
    listed = await client.get("/api/lockers", params={"cursor": "a\x00b"})
    assert problem_fields(listed) == ["cursor"]
    assert (await client.get("/api/assets")).status_code == 200  # nothing was stored


@pytest.mark.parametrize("name", ["Rolex\x07", "line\nbreak", "tab\there", "c1\x85", "del\x7f"])
async def test_control_characters_are_refused_in_asset_names(
    core: Core, client: httpx.AsyncClient, name: str
) -> None:
    """An asset name with a control character is a 422 on name; nothing is registered."""
    body = {"name": name, "category": "watch", "lockerRef": first_ref(core)}
    refused = await client.post("/api/assets", json=body)
    assert problem_fields(refused) == ["name"]
    assert "control characters" in refused.text
    assert (await client.get("/api/assets")).json()["items"] == []


@pytest.mark.parametrize(
    "cursor", [encode_cursor("no/slash"), encode_cursor("-dash"), encode_cursor("a|b"), "%%%"]
)
async def test_forged_locker_cursors_are_refused(client: httpx.AsyncClient, cursor: str) -> None:
    """A cursor on /api/lockers that does not hold a locker ref is a 422 on cursor."""
    refused = await client.get("/api/lockers", params={"cursor": cursor})
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["details"][0]["field"] == "cursor"


async def test_a_wrong_method_is_405_with_allow(client: httpx.AsyncClient) -> None:
    """DELETE on /api/lockers answers 405 E_METHOD_NOT_ALLOWED with the allowed methods."""
    refused = await client.delete("/api/lockers")
    assert refused.status_code == 405
    assert refused.json()["error"]["code"] == "E_METHOD_NOT_ALLOWED"
    assert set(refused.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST"}
    assert refused.json()["error"]["requestId"] == refused.headers["x-request-id"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer pk_no_such"}])
async def test_401_carries_a_bearer_challenge(core: Core, headers: dict[str, Any]) -> None:
    """Without a key or with a wrong one, a 401 says WWW-Authenticate: Bearer."""
    transport = httpx.ASGITransport(app=create_app(core))
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers) as c:
        refused = await c.get("/api/assets")
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    assert refused.json()["error"]["code"] == "E_UNAUTHORIZED"
