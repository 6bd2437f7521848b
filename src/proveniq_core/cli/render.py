"""How the CLI prints: tables that keep ids whole, JSON, times, progress and one-line errors.

Every command prints through this module, so a listing looks and narrows the same way
everywhere: an id is never cut (an id you cannot paste into the next command is a broken
table); when the terminal is too narrow, whole columns are left out instead, the ids first
kept, and ``--json`` always prints everything.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

out = Console()
err = Console(stderr=True)

PROGRESS_AFTER = 1.0
"""Seconds a wait may last before a spinner shows what it waits for."""


class CliError(Exception):
    """A failure the user can act on: printed as one line on stderr, no traceback."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def error_line(message: str) -> None:
    """Print ``error: message`` on stderr as one line (never wrapped, never markup)."""
    err.print(Text(f"error: {message}", style="red"), soft_wrap=True)


def note(message: str) -> None:
    """A dim remark on stderr (how many were shown, what was left out)."""
    err.print(Text(message, style="dim"), soft_wrap=True)


def print_json(value: Any) -> None:
    """JSON on stdout, for scripts: ``--json`` on every listing and show command."""
    print(json.dumps(value, indent=2, default=str))


@contextlib.contextmanager
def progress(message: str, *, after: float = PROGRESS_AFTER) -> Iterator[None]:
    """A spinner on stderr naming what we wait for, shown once the wait passes ``after`` s.

    Quick calls print nothing; on a pipe (not a terminal) rich prints nothing either.
    """
    status = err.status(message)
    lock = threading.Lock()
    state = {"done": False, "shown": False}

    def show() -> None:
        with lock:
            if not state["done"]:
                status.start()
                state["shown"] = True

    timer = threading.Timer(after, show)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        with lock:
            state["done"] = True
            if state["shown"]:
                status.stop()


STYLE = {
    # sagas and steps
    "completed": "green",
    "running": "cyan",
    "compensating": "yellow",
    "deferred": "yellow",
    "interrupted": "yellow",
    "compensated": "magenta",
    "failed": "red",
    "compensation_failed": "bold red",
    # retry-queue entries
    "pending": "cyan",
    "retrying": "yellow",
    "exhausted": "bold red",
    "resolved": "green",
    "discarded": "dim",
    # assets
    "linked": "green",
    "verified": "green",
    "pending_link": "yellow",
    "link_failed": "bold red",
    # circuits
    "closed": "green",
    "half_open": "yellow",
    "open": "bold red",
}


def status(value: str | None) -> Text:
    """A status word in its colour."""
    return Text(value or "–", style=STYLE.get(value or "", ""))


def when(at: datetime | str | None) -> str:
    """A time as ``YYYY-MM-DD HH:MM:SSZ`` (UTC), or a dash."""
    if not at:
        return "–"
    if isinstance(at, str):
        at = datetime.fromisoformat(at)
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z"


def clock(at: datetime | None) -> str:
    """A time of day with milliseconds (UTC), for step timelines."""
    return f"{at.astimezone(UTC):%H:%M:%S.%f}"[:-3] if at else "–"


def duration(ms: float | None) -> str:
    """A duration for people: ms, s, or minutes and seconds."""
    if ms is None:
        return "–"
    if ms < 1000:
        return f"{ms:.1f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s"
    return f"{int(ms // 60_000)}m{ms % 60_000 / 1000:04.1f}s"


def error_text(doc: dict[str, Any] | None) -> str:
    """An error document as ``CODE: message``, or a dash."""
    if not doc:
        return "–"
    return f"{doc.get('code')}: {doc.get('message') or doc.get('fault') or ''}"


@dataclass(frozen=True)
class Col:
    """A table column. ``whole``: never wrapped nor cut (ids, codes, statuses); else its
    text may wrap at spaces. ``keep``: never left out, however narrow the terminal."""

    header: str
    whole: bool = True
    keep: bool = False
    style: str = ""


def table(
    cols: Sequence[Col],
    rows: Sequence[Sequence[RenderableType]],
    *,
    drop: Sequence[str] = (),
    title: str | None = None,
    console: Console | None = None,
) -> None:
    """Print ``rows`` as a table that fits the terminal without cutting a whole column.

    Too wide, columns named in ``drop`` are left out in that order until it fits (and a
    note says which); if even the kept ones do not fit, each row prints as lines of
    ``header: value``.
    """
    console = console or out
    shown = list(range(len(cols)))
    left_out: list[str] = []
    for name in (*drop, None):
        widths = _widths(cols, rows, shown, console)
        if widths is not None:
            console.print(_build(cols, rows, shown, widths, title))
            if left_out:
                note(
                    f"{', '.join(left_out)} left out to fit {console.width} columns;"
                    " a wider terminal or --json shows them"
                )
            return
        if name is None:
            break
        index = next(i for i, c in enumerate(cols) if c.header == name)
        if index in shown and not cols[index].keep:
            shown.remove(index)
            left_out.append(name)
    _records(cols, rows, console)


def _widths(
    cols: Sequence[Col],
    rows: Sequence[Sequence[RenderableType]],
    shown: list[int],
    console: Console,
) -> list[int] | None:
    """Each shown column's width, so that the table fits ``console.width``; None if it
    cannot: a whole column takes its longest cell, a wrapping one at least its longest
    word. The widest wrapping columns narrow first.

    Computed here rather than left to rich, which narrows any column to make a table fit,
    cutting words (and ids) with an ellipsis.
    """
    least, most = [], []
    for i in shown:
        cells = [cols[i].header, *(_plain(row[i]) for row in rows)]
        lines = [line for cell in cells for line in cell.splitlines() or [""]]
        most.append(max(cell_len(line) for line in lines))
        if cols[i].whole:
            least.append(most[-1])
        else:
            least.append(max(cell_len(word) for line in lines for word in line.split() or [""]))
    # The box and padding around the columns, measured on the same table at width 1 each.
    frame = _build(cols, rows, shown, [1] * len(shown), None)
    wide = console.options.update_width(1 << 20)  # Measurement.get clamps to the width given
    room = console.width - (Measurement.get(console, wide, frame).maximum - len(shown))
    if sum(least) > room:
        return None
    widths = list(most)
    excess = sum(widths) - room
    while excess > 0:
        slack = [(w, k) for k, w in enumerate(widths) if w > least[k]]
        _, k = max(slack)
        widths[k] -= 1
        excess -= 1
    return widths


def _build(
    cols: Sequence[Col],
    rows: Sequence[Sequence[RenderableType]],
    shown: list[int],
    widths: list[int],
    title: str | None,
) -> Table:
    grid = Table(
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        title=title,
        title_justify="left",
    )
    for i, width in zip(shown, widths, strict=True):
        col = cols[i]
        grid.add_column(col.header, no_wrap=col.whole, width=width, style=col.style)
    for row in rows:
        grid.add_row(*(row[i] for i in shown))
    return grid


def _plain(cell: RenderableType) -> str:
    return cell.plain if isinstance(cell, Text) else str(cell)


def _records(
    cols: Sequence[Col], rows: Sequence[Sequence[RenderableType]], console: Console
) -> None:
    """One ``header: value`` line per cell, a blank line between rows: for tiny terminals."""
    width = max(len(c.header) for c in cols)
    for n, row in enumerate(rows):
        if n:
            console.print()
        for col, cell in zip(cols, row, strict=True):
            line = Text(f"{col.header:<{width}}  ").append(
                cell if isinstance(cell, Text) else Text(str(cell))
            )
            console.print(line, soft_wrap=True)


def fields(pairs: Sequence[tuple[str, RenderableType]], *, console: Console | None = None) -> None:
    """A ``label  value`` block for one record (``show`` commands)."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    for label, value in pairs:
        grid.add_row(label, value)
    (console or out).print(grid)
