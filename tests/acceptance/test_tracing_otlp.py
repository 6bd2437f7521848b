"""``proveniq serve`` with ``OTEL_EXPORTER_OTLP_ENDPOINT`` exports a registration's trace over
OTLP/HTTP to a real receiver started here, decoded with ``opentelemetry-proto``."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from proveniq_core.embedded import free_port
from tests.acceptance.test_serve import Served


class Collector:
    """An OTLP/HTTP trace receiver: keeps every ``POST /v1/traces`` body, answers 200."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with collector.lock:
                    collector.paths.append(self.path)
                    collector.bodies.append(body)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def spans(self) -> list[tuple[str, Any]]:
        """(service.name, span) for every span received."""
        out: list[tuple[str, Any]] = []
        with self.lock:
            bodies = list(self.bodies)
        for body in bodies:
            request = ExportTraceServiceRequest.FromString(body)
            for resource_spans in request.resource_spans:
                service = next(
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                )
                for scope_spans in resource_spans.scope_spans:
                    out.extend((service, s) for s in scope_spans.spans)
        return out


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    c.thread.start()
    try:
        yield c
    finally:
        c.server.shutdown()
        c.server.server_close()
        c.thread.join()


def test_serve_exports_one_registrations_trace_to_an_otlp_receiver(
    collector: Collector, database_url: str, tmp_path: Path
) -> None:
    """A registration against ``proveniq serve`` arrives at the receiver as one trace of the
    service ``proveniq-core``: the request, the saga, the locker command and the device's
    span under it, and the verification."""
    port = free_port()
    served = Served(
        tmp_path / "home",
        port,
        PROVENIQ_DATABASE_URL=database_url,
        PROVENIQ_WORKERS="1",  # the verification runs in a worker process: one trace still
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="100",
        NO_PROXY="127.0.0.1,localhost",
    )
    try:
        headers = {"Authorization": f"Bearer {served.value('Admin API key:')}"}
        base = f"http://127.0.0.1:{port}"
        body = {"name": "Watch", "category": "watch", "lockerRef": "locker-001"}
        created = httpx.post(f"{base}/api/assets", json=body, headers=headers, timeout=10)
        assert created.status_code == 201, created.text
        url = f"{base}/api/assets/{created.json()['assetId']}"
        deadline = time.monotonic() + 30
        while (asset := httpx.get(url, headers=headers).json())["status"] != "verified":
            assert time.monotonic() < deadline, asset
            time.sleep(0.1)
    finally:
        assert served.stop() == 0  # the provider's shutdown exports what is still batched

    assert set(collector.paths) == {"/v1/traces"}
    received = collector.spans()
    assert {service for service, _ in received} == {"proveniq-core"}
    by_name = {s.name: s for _, s in received}
    request = by_name["POST /api/assets"]
    trace_id = request.trace_id
    for name in (
        "saga asset_registration",
        "saga.step link_locker",
        "locker.command link",
        "locker.device link",
        "verify",
        "locker.command collect_evidence",
        "locker.device collect_evidence",
    ):
        assert by_name[name].trace_id == trace_id, name
    assert by_name["saga asset_registration"].parent_span_id == request.span_id
    assert by_name["locker.device link"].parent_span_id == by_name["locker.command link"].span_id
    for _, s in sorted(received, key=lambda r: r[1].start_time_unix_nano):
        if s.trace_id == trace_id:
            ms = (s.end_time_unix_nano - s.start_time_unix_nano) / 1e6
            print(f"{s.name}  {ms:.1f} ms")
