"""OpenTelemetry traces: set up from the standard ``OTEL_*`` variables, off by default.

``configure`` installs an SDK tracer provider exporting over OTLP/HTTP only when
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set or
``OTEL_TRACES_EXPORTER=otlp``; the exporter, sampler and batch processor then read their own
``OTEL_*`` variables. ``OTEL_SERVICE_NAME`` defaults to ``proveniq-core``. Otherwise spans
come from the API's no-op tracer, and the work done only for traces (trace-context lookups,
``traceparent`` fields) is skipped: ``enabled()`` is false.

A trace crosses process boundaries by the W3C ``traceparent``: in an HTTP request's headers
(FastAPI's own request span continues it), in a locker command (``docs/architecture.md``
§4), in a saga's data (so that a saga resumed by another process after a crash stays in its
trace) and in a webhook delivery's headers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Final

from fastapi.telemetry import TelemetryConfig
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "TRACEPARENT",
    "app_telemetry",
    "configure",
    "context_of",
    "enabled",
    "event",
    "exemplar",
    "failed",
    "inject",
    "install",
    "shutdown",
    "span",
    "traceparent",
    "uninstall",
]

TRACEPARENT: Final = "traceparent"
DEFAULT_SERVICE_NAME: Final = "proveniq-core"

_PROPAGATOR: Final = TraceContextTextMapPropagator()
tracer: Final = trace.get_tracer("proveniq_core")
"""Follows the global provider, once one is installed; the no-op tracer until then."""

_state: dict[str, Any] = {"provider": None}


def enabled() -> bool:
    """Whether this process records spans (a provider was installed here)."""
    return _state["provider"] is not None


def wanted(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for the OTLP exporter."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",")}
    return (
        "otlp" in exporters
        or bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        or bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    )


def configure(env: Mapping[str, str] | None = None) -> bool:
    """Install the OTLP/HTTP exporting provider if the environment asks for it; return
    whether tracing is on. Safe to call more than once."""
    if enabled():
        return True
    if not wanted(env):
        return False
    # Imported here: a process without tracing never loads the SDK or the exporter.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    env = os.environ if env is None else env
    name = env.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    install(provider)
    return True


def install(provider: trace.TracerProvider) -> None:
    """Make ``provider`` this process's tracer provider and turn tracing on (one provider
    per process: the API refuses a second one)."""
    if trace.get_tracer_provider() is not provider:
        trace.set_tracer_provider(provider)
    _state["provider"] = provider


def uninstall() -> None:
    """Turn the work done only for traces off again (the provider stays: tests)."""
    _state["provider"] = None


def shutdown() -> None:
    """Flush and stop the provider this module installed, if any (at process exit)."""
    provider = _state["provider"]
    stop = getattr(provider, "shutdown", None)
    if stop is not None:
        stop()


_NO_SPAN: Final = nullcontext(trace.INVALID_SPAN)  # reusable: it keeps no state


def span(
    name: str,
    attributes: Mapping[str, Any] | None = None,
    *,
    parent: Context | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    errors: bool = True,
) -> AbstractContextManager[Span]:
    """A span around the block, current inside it; an exception escaping it marks it failed
    unless ``errors`` is false (the caller says how it ended). With tracing off, the API's
    invalid span, and nothing made current: no cost beyond the call."""
    if _state["provider"] is None:
        return _NO_SPAN
    return _recording(name, attributes, parent, kind, errors)


@contextmanager
def _recording(
    name: str,
    attributes: Mapping[str, Any] | None,
    parent: Context | None,
    kind: SpanKind,
    errors: bool,
) -> Iterator[Span]:
    attrs = {k: v for k, v in (attributes or {}).items() if v is not None}
    with tracer.start_as_current_span(
        name,
        context=parent,
        kind=kind,
        attributes=attrs,
        record_exception=errors,
        set_status_on_exception=errors,
    ) as s:
        yield s


def failed(s: Span, code: str | None, message: str = "") -> None:
    """Mark ``s`` failed with the error taxonomy's ``code``."""
    if code is not None:
        s.set_attribute("error.code", code)
    s.set_status(Status(StatusCode.ERROR, message or code or ""))


def traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span when it is sampled, else None."""
    if _state["provider"] is None:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get(TRACEPARENT)


def inject(carrier: MutableMapping[str, str]) -> None:
    """Add the current span's ``traceparent`` to ``carrier`` (headers), if there is one."""
    _PROPAGATOR.inject(carrier)


def context_of(value: str | None) -> Context | None:
    """The context a stored or received ``traceparent`` continues; None if absent or bad."""
    if not value:
        return None
    ctx = _PROPAGATOR.extract({TRACEPARENT: value})
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def event(s: Span, name: str, attributes: Mapping[str, Any]) -> None:
    """Add an event to ``s`` with the attributes a span can hold (scalars; others as text)."""
    if not s.is_recording():
        return
    attrs = {
        k: v if isinstance(v, str | bool | int | float) else str(v)
        for k, v in attributes.items()
        if v is not None
    }
    s.add_event(name, attrs)


def exemplar() -> dict[str, str] | None:
    """A histogram exemplar naming the current trace, when the span is sampled."""
    if _state["provider"] is None:
        return None
    ctx = trace.get_current_span().get_span_context()
    if not ctx.trace_flags.sampled:
        return None
    return {"trace_id": format(ctx.trace_id, "032x")}


_UNTRACED: Final = frozenset({"/metrics", "/healthz", "/readyz"})


def _untraced(scope: MutableMapping[str, Any]) -> bool:
    return scope.get("path") in _UNTRACED or str(scope.get("path", "")).startswith("/static")


def app_telemetry() -> TelemetryConfig:
    """FastAPI's own request spans (the server span, continuing a client's ``traceparent``),
    and nothing else of its telemetry: no probe or scrape spans, no per-dependency spans,
    no OpenTelemetry metrics or logs (Prometheus and structlog have those)."""
    return {
        "tracing": True,
        "operation_spans": False,
        "metrics": False,
        "logs": False,
        "auto_configure": False,
        "exclude": _untraced,
    }
