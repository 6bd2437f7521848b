"""OpenTelemetry traces (docs/architecture.md §4) through the real app, saga engine, broker,
simulated fleet, Verify and webhook worker, recorded by the SDK's in-memory exporter.

The global tracer provider can be set once per process: one provider is installed on first
use and a gate lets spans through to the exporter only while a test here runs; outside
these tests ``tracing.enabled()`` is false again, as in a Core without ``OTEL_*``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from proveniq_core import db
from proveniq_core.errors import LockerTimeoutError
from proveniq_core.ledger import keys
from proveniq_core.ledger.outbox import emit
from proveniq_core.locker.gateway import LockerGateway
from proveniq_core.observability import tracing
from proveniq_core.saga import SagaDefinition, SagaEngine, Step, StepContext
from proveniq_core.saga.registration import NAME as REGISTRATION
from proveniq_core.service import Core
from tests.integration.conftest import TENANT, api_client, core_running, first_ref
from tests.integration.test_saga_engine import second_pool
from tests.integration.test_webhooks import Receiver, serving_receivers, subscribe

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_PARENT = f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01"
STEPS = ["create_ledger_record", "link_locker", "update_status", "queue_verification"]


class _Gate(SpanProcessor):
    """Passes ended spans to the exporter only while ``open``."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        self.exporter = exporter
        self.inner = SimpleSpanProcessor(exporter)
        self.open = False

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        if self.open:
            self.inner.on_end(span)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


_GATE: dict[str, tuple[TracerProvider, _Gate]] = {}


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on, for this test, into a fresh in-memory exporter."""
    if "gate" not in _GATE:
        provider = TracerProvider()
        gate = _Gate(InMemorySpanExporter())
        provider.add_span_processor(gate)
        _GATE["gate"] = (provider, gate)
    provider, gate = _GATE["gate"]
    tracing.install(provider)
    gate.exporter.clear()
    gate.open = True
    try:
        yield gate.exporter
    finally:
        gate.open = False
        tracing.uninstall()
        gate.exporter.clear()


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    with serving_receivers() as start:
        yield start


@pytest_asyncio.fixture
async def core(
    spans: InMemorySpanExporter, database_url: str, mqtt_url: str, tmp_path: Path
) -> AsyncIterator[Core]:
    """A Core traced from its start, that may deliver to local receivers."""
    async with core_running(database_url, mqtt_url, tmp_path, webhook_allow_private=True) as c:
        yield c


async def eventually(check: Callable[[], Awaitable[bool] | bool], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while True:
        done = check()
        if not isinstance(done, bool):
            done = await done
        if done:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def one(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = named(exporter, name)
    assert len(found) == 1, (name, [s.name for s in exporter.get_finished_spans()])
    return found[0]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def trace_of(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.trace_id, "032x")


def print_trace(spans: list[ReadableSpan]) -> None:
    """The trace as a tree with each span's duration (shown with ``pytest -s``)."""
    by_parent: dict[int | None, list[ReadableSpan]] = {}
    ids = {span_id(s) for s in spans}
    for s in sorted(spans, key=lambda s: s.start_time or 0):
        parent = parent_of(s)
        by_parent.setdefault(parent if parent in ids else None, []).append(s)

    def show(parent: int | None, depth: int) -> None:
        for s in by_parent.get(parent, []):
            ms = ((s.end_time or 0) - (s.start_time or 0)) / 1e6
            print(f"{'  ' * depth}{s.name}  {ms:.1f} ms")
            show(span_id(s), depth + 1)

    show(None, 0)


async def test_one_registration_is_one_trace_across_the_device_verify_and_webhook(
    core: Core, spans: InMemorySpanExporter, receivers: Callable[..., Receiver]
) -> None:
    """A registration continues the client's trace: the request, the saga and every step,
    the locker command and the device's own span under it, the verification with its checks
    and the webhook delivery (which sends ``traceparent``) all share its trace id, which the
    request's latency sample carries as an exemplar."""
    key = await keys.create_key(core.pool, TENANT, keys.SCOPES, name="tracing")
    receiver = receivers()
    async with api_client(core, key) as client:
        await subscribe(client, receiver.url, ["verification.completed"])
        resp = await client.post(
            "/api/assets",
            json={"name": "Leica M6", "category": "camera", "lockerRef": first_ref(core)},
            headers={"traceparent": CLIENT_PARENT},
        )
        assert resp.status_code == 201, resp.text
        scraped = await client.get(
            "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
        )
    await eventually(lambda: bool(receiver.received()))
    await eventually(lambda: bool(named(spans, "webhook.deliver")))

    request = one(spans, "POST /api/assets")
    assert trace_of(request) == CLIENT_TRACE
    assert parent_of(request) == 0x00F067AA0BA902B7
    assert request.attributes is not None
    assert request.attributes["http.response.status_code"] == 201

    saga = one(spans, f"saga {REGISTRATION}")
    assert parent_of(saga) == span_id(request)
    assert saga.attributes is not None
    assert saga.attributes["asset.id"] == resp.json()["assetId"]
    assert saga.attributes["saga.outcome"] == "completed"
    for step in STEPS:
        s = one(spans, f"saga.step {step}")
        assert parent_of(s) == span_id(saga)
        assert s.attributes is not None
        assert s.attributes["saga.step.outcome"] == "completed"
        assert s.attributes["saga.step.attempt"] == 1
        assert s.attributes["asset.id"] == resp.json()["assetId"]

    link = one(spans, "locker.command link")
    assert parent_of(link) == span_id(one(spans, "saga.step link_locker"))
    assert link.attributes is not None
    assert link.attributes["locker.ref"] == first_ref(core)
    device = one(spans, "locker.device link")
    assert parent_of(device) == span_id(link)

    verify = one(spans, "verify")
    assert verify.attributes is not None
    assert verify.attributes["verification.outcome"] == "verified"
    assert {e.name for e in verify.events} >= {"check gps_in_geofence", "check timestamp_fresh"}
    collect = one(spans, "locker.command collect_evidence")
    assert parent_of(collect) == span_id(verify)
    assert parent_of(one(spans, "locker.device collect_evidence")) == span_id(collect)

    delivery = one(spans, "webhook.deliver")
    assert delivery.attributes is not None
    assert delivery.attributes["http.response.status_code"] == 200
    sent = receiver.received()[0].headers["traceparent"]
    assert sent.split("-")[1] == CLIENT_TRACE
    assert int(sent.split("-")[2], 16) == span_id(delivery)

    # The request's latency sample names its trace (an OpenMetrics exemplar).
    assert scraped.headers["content-type"].startswith("application/openmetrics-text")
    assert any(
        line.startswith("core_orchestration_latency_seconds_bucket")
        and 'operation="POST /api/assets"' in line
        and f'# {{trace_id="{CLIENT_TRACE}"}}' in line
        for line in scraped.text.splitlines()
    ), scraped.text

    trace_spans = [s for s in spans.get_finished_spans() if trace_of(s) == CLIENT_TRACE]
    for s in [request, saga, link, device, verify, collect, delivery]:
        assert s in trace_spans
    print_trace(trace_spans)


async def test_a_saga_resumed_by_another_process_after_a_crash_stays_in_its_trace(
    pool: db.Pool, database_url: str, spans: InMemorySpanExporter
) -> None:
    """A saga whose process died mid-step is resumed by another engine (its own pool) in the
    trace it started in, read from the ``traceparent`` stored with the saga."""
    started, release = asyncio.Event(), asyncio.Event()

    async def first(ctx: StepContext) -> dict[str, Any]:
        return {}

    async def second(ctx: StepContext) -> dict[str, Any]:
        if ctx.attempt == 1:  # the first process hangs here and dies
            started.set()
            await release.wait()
        return {}

    definition = SagaDefinition(
        "traced", (Step("first", first), Step("second", second, timeout=30))
    )
    crashed = SagaEngine(pool, lease=0.3, definitions=[definition])
    with tracing.span("client") as client:
        task = asyncio.create_task(crashed.run(definition, {}, saga_id=None))
        await started.wait()
    task.cancel()  # the process dies: no checkpoint, the lease runs out
    with pytest.raises(asyncio.CancelledError):
        await task
    client_trace = format(client.get_span_context().trace_id, "032x")

    async with second_pool(database_url) as other:
        resumer = SagaEngine(other, lease=5.0, definitions=[definition])
        results: list[Any] = []

        async def resumed() -> bool:
            results.extend(await resumer.run_due())
            return bool(results)

        await eventually(resumed)
    assert results[0].ok

    runs = named(spans, "saga traced")
    assert len(runs) == 2
    assert {trace_of(s) for s in runs} == {client_trace}
    assert {parent_of(s) for s in runs} == {client.get_span_context().span_id}
    attempts = named(spans, "saga.step second")
    assert {trace_of(s) for s in attempts} == {client_trace}
    assert sorted(
        int(str(s.attributes["saga.step.attempt"])) for s in attempts if s.attributes
    ) == [1, 2]


async def test_tracing_off_adds_nothing_to_the_saga_or_the_command(pool: db.Pool) -> None:
    """With tracing off, a saga stores no trace context."""

    async def step(ctx: StepContext) -> dict[str, Any]:
        return {}

    definition = SagaDefinition("untraced", (Step("only", step),))
    result = await SagaEngine(pool).run(definition, {"x": 1})
    assert result.ok
    assert "traceparent" not in result.data
    assert not tracing.enabled()
    async with db.connection(pool) as conn:
        row = await db.fetch_one(conn, "get_saga", {"id": result.saga_id})
    assert row is not None and "traceparent" not in row["data"]


async def test_a_command_without_reply_fails_its_span_its_step_and_its_saga(
    pool: db.Pool, mqtt_url: str, spans: InMemorySpanExporter
) -> None:
    """A locker command nobody answers marks its span, its step attempt and its saga failed,
    with the error's code."""
    gateway = LockerGateway(mqtt_url)
    await gateway.start()

    async def ping(ctx: StepContext) -> dict[str, Any]:
        return await gateway.send(
            f"nobody-{uuid.uuid4().hex[:8]}", "ping", command_id=ctx.idempotency_key, timeout=0.2
        )

    try:
        definition = SagaDefinition("pinging", (Step("ping", ping),))
        result = await SagaEngine(pool).run(definition, {})
    finally:
        await gateway.stop()
    assert result.status == "failed"

    command = one(spans, "locker.command ping")
    assert command.status.status_code is StatusCode.ERROR
    assert command.attributes is not None
    assert command.attributes["error.code"] == LockerTimeoutError.code
    step = one(spans, "saga.step ping")
    assert parent_of(command) == span_id(step)
    assert step.status.status_code is StatusCode.ERROR
    assert step.attributes is not None
    assert step.attributes["saga.step.outcome"] == "failed"
    assert step.attributes["error.code"] == LockerTimeoutError.code
    saga = one(spans, "saga pinging")
    assert saga.attributes is not None
    assert saga.attributes["saga.outcome"] == "failed"


async def test_a_refused_webhook_attempt_is_a_failed_span_with_its_status(
    core: Core, spans: InMemorySpanExporter, receivers: Callable[..., Receiver]
) -> None:
    """A delivery attempt the receiver answers 500 is a failed span, outcome pending (it will
    be retried), with the receiver's status."""
    key = await keys.create_key(core.pool, TENANT, keys.SCOPES, name="tracing")
    receiver = receivers((500, {}))
    async with api_client(core, key) as client:
        await subscribe(client, receiver.url, ["asset.created"])
        resp = await client.post(
            "/api/assets",
            json={"name": "Leica M6", "category": "camera", "lockerRef": first_ref(core)},
        )
        assert resp.status_code == 201, resp.text
    await eventually(lambda: bool(named(spans, "webhook.deliver")))
    delivery = one(spans, "webhook.deliver")
    assert delivery.status.status_code is StatusCode.ERROR
    assert delivery.attributes is not None
    assert delivery.attributes["http.response.status_code"] == 500
    assert delivery.attributes["webhook.outcome"] == "pending"
    assert trace_of(delivery) == trace_of(one(spans, "POST /api/assets"))


async def test_an_event_about_no_asset_of_ours_is_delivered_in_a_trace_of_its_own(
    core: Core, spans: InMemorySpanExporter, receivers: Callable[..., Receiver]
) -> None:
    """An event whose ``assetId`` names no asset (not even a UUID) is still delivered, in a
    new trace whose ``traceparent`` the receiver gets."""
    key = await keys.create_key(core.pool, TENANT, keys.SCOPES, name="tracing")
    receiver = receivers()
    async with api_client(core, key) as client:
        await subscribe(client, receiver.url, ["asset.created"])
    async with db.transaction(core.pool) as conn:
        await emit(conn, TENANT, "asset.created", {"assetId": "a-9"})
    await eventually(lambda: bool(named(spans, "webhook.deliver")))
    delivery = one(spans, "webhook.deliver")
    assert delivery.parent is None
    assert delivery.attributes is not None
    assert delivery.attributes["webhook.outcome"] == "delivered"
    assert receiver.received()[0].headers["traceparent"].split("-")[1] == trace_of(delivery)
