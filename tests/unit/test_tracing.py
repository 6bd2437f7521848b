"""Tracing set-up and helpers (observability/tracing.py) and ``traceparent`` on the wire."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from proveniq_core import logs
from proveniq_core.locker.protocol import Command, decode_command, encode
from proveniq_core.observability import tracing

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_the_otlp_exporter_is_wanted_only_when_the_environment_asks() -> None:
    """An endpoint or OTEL_TRACES_EXPORTER=otlp turns tracing on; nothing, none or
    OTEL_SDK_DISABLED leaves it off."""
    assert not tracing.wanted({})
    assert not tracing.wanted({"OTEL_TRACES_EXPORTER": "none"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "console, otlp"})
    assert not tracing.wanted(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"}
    )


def test_configure_without_otel_variables_leaves_tracing_off() -> None:
    """With no OTEL_* variable nothing is installed: spans do not record, and no trace
    context is sent or stored."""
    assert tracing.configure({}) is False
    assert not tracing.enabled()
    with tracing.span("anything") as s:
        assert not s.is_recording()
        assert tracing.traceparent() is None
        assert tracing.exemplar() is None


def test_a_stored_traceparent_is_continued_and_a_bad_one_ignored() -> None:
    """``context_of`` gives the context of a valid traceparent, None for garbage or nothing."""
    ctx = tracing.context_of(PARENT)
    assert ctx is not None
    parent = trace.get_current_span(ctx).get_span_context()
    assert format(parent.trace_id, "032x") == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert tracing.context_of("00-garbage") is None
    assert tracing.context_of("") is None
    assert tracing.context_of(None) is None


def test_log_lines_carry_the_ids_of_the_active_span() -> None:
    """The structlog processor adds trace_id/span_id inside a recording span, nothing outside."""
    tracer = TracerProvider().get_tracer("test")
    assert logs.add_trace_ids(None, "info", {"event": "x"}) == {"event": "x"}
    with tracer.start_as_current_span("work") as s:
        line = logs.add_trace_ids(None, "info", {"event": "x"})
        assert line["trace_id"] == format(s.get_span_context().trace_id, "032x")
        assert line["span_id"] == format(s.get_span_context().span_id, "016x")


def test_a_command_may_carry_a_traceparent_and_need_not() -> None:
    """``traceparent`` is an optional field of the v1 command: sent when given, absent
    otherwise, and a malformed value does not make the command invalid."""
    now = datetime.now(UTC)
    plain = Command(commandId="c1", type="ping", issuedAt=now)
    assert "traceparent" not in json.loads(encode(plain))
    traced = Command(commandId="c2", type="ping", issuedAt=now, traceparent=PARENT)
    assert decode_command(encode(traced)).traceparent == PARENT
    odd = json.dumps(
        {"v": 1, "commandId": "c3", "type": "ping", "issuedAt": now.isoformat(), "traceparent": "x"}
    )
    assert decode_command(odd).traceparent == "x"
    assert tracing.context_of(decode_command(odd).traceparent) is None
