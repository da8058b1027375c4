"""Tracer provider bootstrap; exporters beyond the console arrive with the observability work."""

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter


def configure_tracing(service: str) -> TracerProvider:
    """`OTEL_TRACES_EXPORTER=console` prints spans; the default records nothing outside."""
    provider = TracerProvider(resource=Resource.create({"service.name": f"imgate-{service}"}))
    if os.environ.get("OTEL_TRACES_EXPORTER", "none") == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider
