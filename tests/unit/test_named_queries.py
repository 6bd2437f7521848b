"""Every named query in sql/queries.sql is described and has a name of its own."""

from __future__ import annotations

import re
from collections import Counter
from importlib import resources

# The header the query loader splits on (proveniq_core.db).
HEADER = re.compile(r"^-- (\w+) --$", re.MULTILINE)


def _queries_sql() -> str:
    return resources.files("proveniq_core.sql").joinpath("queries.sql").read_text("utf-8")


def _names(text: str) -> list[str]:
    return HEADER.findall(text)


def _undescribed(text: str) -> list[str]:
    """The queries whose header is not followed directly by a ``-- `` comment line."""
    lines = text.splitlines()
    missing = []
    for i, line in enumerate(lines):
        m = HEADER.fullmatch(line)
        if m is None:
            continue
        below = lines[i + 1] if i + 1 < len(lines) else ""
        if not below.startswith("-- ") or HEADER.fullmatch(below):
            missing.append(m.group(1))
    return missing


def test_every_named_query_has_a_description() -> None:
    """Each query header in queries.sql has at least one comment line right under it."""
    text = _queries_sql()
    assert len(_names(text)) > 100
    assert _undescribed(text) == []


def test_no_two_named_queries_share_a_name() -> None:
    """No query name appears twice, so none silently replaces another when loaded."""
    counts = Counter(_names(_queries_sql()))
    assert [name for name, n in counts.items() if n > 1] == []


def test_the_check_finds_an_undescribed_query() -> None:
    """A header followed by SQL, by another header or by nothing counts as undescribed."""
    text = (
        "-- described --\n-- Reads one row.\nSELECT 1\n\n"
        "-- bare --\nSELECT 2\n\n"
        "-- stacked --\n-- next --\n-- Reads three.\nSELECT 3\n\n"
        "-- last --"
    )
    assert _undescribed(text) == ["bare", "stacked", "last"]
