"""An OTLP/HTTP trace receiver for tests: the services export their spans here as they would to
Jaeger or an OpenTelemetry collector, and the test reads them back as plain records."""

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, Response
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tools.modelsim import serve_app


@dataclass(frozen=True)
class SpanRecord:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    service: str
    kind: int
    attributes: dict[str, Any]
    events: tuple[str, ...]
    start_ns: int
    end_ns: int


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, which) if which else None


@dataclass
class Collector:
    spans: list[SpanRecord] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        records = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    records.append(
                        SpanRecord(
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            name=span.name,
                            service=str(resource.get("service.name", "")),
                            kind=span.kind,
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            events=tuple(e.name for e in span.events),
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                        )
                    )
        with self.lock:
            self.spans.extend(records)

    def snapshot(self) -> list[SpanRecord]:
        with self.lock:
            return list(self.spans)


@contextmanager
def serve_collector() -> Iterator[tuple[Collector, str]]:
    """A collector on a free port; yields it and the endpoint for OTEL_EXPORTER_OTLP_ENDPOINT."""
    collector = Collector()
    app = FastAPI()

    @app.post("/v1/traces")
    async def traces(request: Request) -> Response:
        collector.add(await request.body())
        return Response(ExportTraceServiceResponse().SerializeToString(), media_type="application/x-protobuf")

    with serve_app(app, "OTLP collector") as port:
        yield collector, f"http://127.0.0.1:{port}"
