"""Input text PostgreSQL cannot store: a NUL character anywhere is a 422 naming the field.

PostgreSQL's text holds no NUL (U+0000), so one that reached a query failed there with the
database's words; ``refuse_nul`` (an app-wide dependency) refuses it first, in the query
string, the path, a JSON body or a form (the console's). ``printable`` keeps control
characters out of names, which are shown in the console and sent on in webhooks.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import Request

from proveniq_core.errors import ValidationFailedError

_NUL_PROBLEM = "must not contain NUL characters"
FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")


def _nul_fields(value: Any, path: str = "") -> Iterator[str]:
    """The dotted paths of the strings (and keys) in decoded JSON that hold a NUL."""
    if isinstance(value, str):
        if "\x00" in value:
            yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                yield where
            yield from _nul_fields(item, where)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _nul_fields(item, f"{path}.{index}" if path else str(index))


def _refuse(fields: list[str]) -> None:
    if fields:
        problems = [{"field": f, "problem": _NUL_PROBLEM, "type": "nul"} for f in fields]
        summary = "; ".join(f"{f or 'body'}: {_NUL_PROBLEM}" for f in fields[:5])
        raise ValidationFailedError(f"Invalid request: {summary}", details=problems)


async def refuse_nul(request: Request) -> AsyncIterator[None]:
    """422 ``E_VALIDATION`` naming each field with a NUL character.

    A form is parsed here, once: the route's ``request.form()`` (or its ``Form`` fields) gets
    the same one, whose uploaded files are closed when the route is done.
    """
    _refuse([k for k, v in request.query_params.multi_items() if "\x00" in k + v])
    _refuse([k for k, v in request.path_params.items() if "\x00" in str(v)])
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith(FORMS):
        form = await request.form()
        try:
            texts = ((k, v if isinstance(v, str) else "") for k, v in form.multi_items())
            _refuse([k for k, v in texts if "\x00" in k + v])  # a file's content is not text
            yield
        finally:
            await form.close()
        return
    if content_type.startswith("application/json"):
        await _refuse_nul_in_json(request)
    yield


async def _refuse_nul_in_json(request: Request) -> None:
    body = await request.body()  # already read (and cached) by FastAPI for a JSON body
    if b"\\u0000" not in body:
        return
    try:
        decoded = json.loads(body)
    except ValueError:
        return  # not JSON: the route's own parsing answers
    _refuse(list(_nul_fields(decoded)))


def printable(value: str) -> str:
    """``value`` if it holds no control character (C0, DEL, C1), else ``ValueError``."""
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise ValueError("must not contain control characters")
    return value


__all__ = ["printable", "refuse_nul"]
