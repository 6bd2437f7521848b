"""structlog set-up: one JSON line per event on stderr, with bound context (request id…)."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog
from opentelemetry import trace


def add_trace_ids(
    logger: object, method: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """structlog processor: ``trace_id`` and ``span_id`` of the span active, if any."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event_dict.setdefault("trace_id", format(ctx.trace_id, "032x"))
        event_dict.setdefault("span_id", format(ctx.span_id, "016x"))
    return event_dict


def configure(level: str = "info", *, json: bool = True, stream: TextIO | None = None) -> None:
    """Log at ``level`` and above, as JSON lines (else coloured console lines) on stderr.

    Every line carries the context bound with ``structlog.contextvars``: ``request_id`` in a
    request, ``saga_id``/``asset_id``/``locker_ref`` while a saga or verification runs, and
    ``trace_id``/``span_id`` while a span is recording. With
    ``stream`` (tests) loggers are not cached, so that a later ``configure`` takes effect.
    """
    lvl = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_trace_ids,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=stream is None,
    )
    # Libraries that use stdlib logging (amqtt, uvicorn, psycopg) speak only on warnings.
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s"
    )
    for noisy in ("amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
