"""The CLI's tables at any terminal width: ids whole, nothing wider than the terminal."""

from __future__ import annotations

import io
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from rich.text import Text

from proveniq_core.cli import render
from proveniq_core.cli.render import Col, table

COLS = [
    Col("id", keep=True),
    Col("asset"),
    Col("locker"),
    Col("status", keep=True),
    Col("retries"),
    Col("next try", whole=False),
    Col("last error"),
]
DROP = ("locker", "retries", "next try", "asset")


def rows(n: int, error: str) -> list[list[Text | str]]:
    return [
        [
            Text(str(uuid.uuid4())),
            Text(str(uuid.uuid4())),
            Text("locker-001"),
            render.status("pending"),
            "3",
            "2026-01-01 12:00:00Z",
            Text(error),
        ]
        for _ in range(n)
    ]


def printed(width: int, data: list[list[Text | str]]) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    saved, render.err = render.err, Console(file=err, width=width)  # where notes go
    try:
        table(COLS, data, drop=DROP, console=Console(file=out, width=width))
    finally:
        render.err = saved
    return out.getvalue(), err.getvalue()


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(min_value=50, max_value=220),
    n=st.integers(min_value=1, max_value=4),
    error=st.sampled_from(["E_LOCKER_UNREACHABLE", "–", "E_LOCKER_TIMEOUT"]),
)
def test_every_id_prints_whole_and_no_line_is_wider_than_the_terminal(
    width: int, n: int, error: str
) -> None:
    """At any width from 50 columns (a label and an id): each entry id appears whole on one
    line, nothing is ellipsized, no line is wider than the terminal."""
    data = rows(n, error)
    out, _ = printed(width, data)
    assert "…" not in out
    assert max(len(line) for line in out.splitlines()) <= width
    words = {word for line in out.splitlines() for word in line.split()}
    for row in data:
        assert str(row[0]) in words


def test_columns_are_left_out_in_order_and_said_so() -> None:
    """At 80 columns the dlq table keeps id, status and last error, and names what it left out."""
    data = rows(2, "E_LOCKER_UNREACHABLE")
    out, err = printed(80, data)
    header = out.splitlines()[1].split()
    assert header == ["id", "status", "last", "error"]
    assert err.strip() == (
        "locker, retries, next try, asset left out to fit 80 columns;"
        " a wider terminal or --json shows them"
    )
    wide, quiet = printed(200, data)
    assert wide.splitlines()[1].split()[:3] == ["id", "asset", "locker"]
    assert quiet == ""


def test_too_narrow_for_the_kept_columns_prints_records() -> None:
    """Narrower than the ids and statuses together: one 'header value' line per cell, the
    ids whole even where the terminal is narrower than a label and an id."""
    data = rows(1, "E_LOCKER_UNREACHABLE")
    out, _ = printed(40, data)
    assert "…" not in out
    lines = out.splitlines()
    assert lines[0].split() == ["id", str(data[0][0])]
    assert lines[1].split() == ["asset", str(data[0][1])]
    assert len(lines) == len(COLS)
