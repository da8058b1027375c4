"""The product's tracer recording into memory, for tests that look at spans."""

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from imgate_common import telemetry


@contextmanager
def recording_tracer() -> Iterator[InMemorySpanExporter]:
    """A private provider whose tracer the product's `telemetry.tracer()` returns meanwhile."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    original = telemetry.tracer
    telemetry.tracer = lambda: provider.get_tracer("test")  # type: ignore[assignment]
    try:
        yield exporter
    finally:
        telemetry.tracer = original  # type: ignore[assignment]
        provider.shutdown()
