"""Tracing: the provider each service sets up, and the trace context carried in bus headers.

One message is one trace: the connector starts it when DingTalk hands the message over, every
publish puts the W3C `traceparent` into the NATS headers, every consumer continues from there,
and httpx calls (DingTalk OpenAPI, model providers) and database statements become child spans.

Exporters follow OpenTelemetry's own variables: `OTEL_TRACES_EXPORTER` (`otlp`, `console`,
`none`), `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT` and `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`
(`http/protobuf`, the default, or `grpc`). With no exporter named and no endpoint set, nothing
is recorded: spans are non-recording (their ids still reach log lines and the bus headers), and
database statements and httpx calls get no spans, so tracing costs next to no CPU per message.

Spans carry ids, kinds, sizes and timings, never message text or secrets, unless
`IMGATE_TRACE_CONTENT=true` is set for debugging.
"""

import os
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

TRACER_NAME = "imgate"
# Attribute names of the product's own ids (the rest follow OpenTelemetry's conventions).
CHANNEL_ID = "imgate.channel_id"
PLATFORM = "imgate.platform"
CONVERSATION_ID = "imgate.conversation_id"
RUN_ID = "imgate.run_id"
MESSAGE_TYPE = "imgate.message_type"
MESSAGE_ID = "imgate.message_id"
ATTEMPT = "imgate.attempt"

# recording: whether spans go anywhere; until `configure_tracing` says otherwise (tests install
# providers of their own), assume they do.
_state: dict[str, Any] = {"content": False, "instrumented": False, "recording": True}


def tracer() -> trace.Tracer:
    """The product's tracer, made once per tracer provider: `get_tracer` builds a new tracer
    and scope each time (7 µs, a third of a span that records nothing)."""
    provider = trace.get_tracer_provider()
    cached = _state.get("tracer")
    if cached is None or cached[0] is not provider:
        cached = _state["tracer"] = (provider, provider.get_tracer(TRACER_NAME))
    return cached[1]  # type: ignore[no-any-return]


def _exporter_name() -> str:
    named = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if named:
        return named
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    return "otlp" if endpoint else "none"


def _otlp_exporter() -> SpanExporter:
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    if protocol != "http/protobuf":
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: use http/protobuf or grpc")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()


def configure_tracing(
    service: str,
    *,
    instance: str | None = None,
    content: bool = False,
    processor: SpanProcessor | None = None,
) -> TracerProvider:
    """Install the process's tracer provider; `processor` adds one (tests collect spans with it)."""
    attributes = {"service.name": f"imgate-{service}", "service.namespace": "imgate"}
    if instance:
        attributes["service.instance.id"] = instance
    exporter = _exporter_name()
    if exporter not in ("otlp", "console", "none"):
        raise ValueError(f"OTEL_TRACES_EXPORTER={exporter!r}: use otlp, console or none")
    recording = exporter != "none" or processor is not None
    # Nothing to export to: spans still get ids (log lines and the bus headers carry them, so
    # a trace continues across services) but record nothing. A recording span with no
    # exporter cost the router and the runner CPU on every message for no one.
    sampler = None if recording else ALWAYS_OFF
    provider = TracerProvider(resource=Resource.create(attributes), sampler=sampler)
    if exporter == "otlp":
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
    elif exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    if processor is not None:
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    _state["content"] = content
    _state["recording"] = recording
    if recording:
        _instrument_libraries()
    return provider


def recording() -> bool:
    """Whether spans are recorded (an exporter or a test's processor takes them)."""
    return bool(_state["recording"])


def _instrument_libraries() -> None:
    """httpx clients (DingTalk, model providers, identity lookups) get client spans and pass the
    trace on in their headers. Once per process."""
    if _state["instrumented"]:
        return
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor().instrument(
        request_hook=_url_without_query, async_request_hook=_async_url_without_query
    )
    _state["instrumented"] = True


URL_ATTRIBUTES = ("http.url", "url.full")


def without_query(url: str) -> str:
    """A URL fit for a span: no query string (sessionWebhook URLs carry their session token
    there, signed media links their signature) and no credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _url_without_query(span: Span, request: Any) -> None:
    if span.is_recording():
        url = without_query(str(request.url))
        for key in URL_ATTRIBUTES:
            span.set_attribute(key, url)


async def _async_url_without_query(span: Span, request: Any) -> None:
    _url_without_query(span, request)


def instrument_engine(engine: Any) -> None:
    """Database statements of one engine as spans (the statement with placeholders, never the
    values). Per engine, made after `configure_tracing`; none when nothing records."""
    if not recording():
        return
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.metrics import get_meter

    usage = get_meter(TRACER_NAME).create_up_down_counter("db.client.connections.usage")
    EngineTracer(trace.get_tracer("opentelemetry.instrumentation.sqlalchemy"), engine.sync_engine, usage)


def content_allowed() -> bool:
    """Whether spans may carry message text (`IMGATE_TRACE_CONTENT`, off by default)."""
    return bool(_state["content"])


def set_content(span: Span, key: str, text: str | None) -> None:
    """Put text on a span only when the operator turned that on."""
    if text is not None and content_allowed():
        span.set_attribute(key, text[:4096])


# -- the trace across the bus --------------------------------------------------------------


H = TypeVar("H", bound=MutableMapping[str, str])


def inject(headers: H, ctx: Context | None = None) -> H:
    """Write the current (or given) trace context into message headers."""
    propagate.inject(headers, context=ctx)
    return headers


def extract(headers: Mapping[str, str] | None) -> Context:
    return propagate.extract(dict(headers or {}))


def carrier() -> dict[str, str]:
    """The current trace context as a plain dict, to store with work that runs later."""
    return dict(inject({}))


@contextmanager
def consumer_span(
    name: str, headers: Mapping[str, str] | None, attributes: Mapping[str, Any] | None = None
) -> Iterator[Span]:
    """A span continuing the trace the headers carry, current while the block runs."""
    with tracer().start_as_current_span(
        name,
        context=extract(headers),
        kind=SpanKind.CONSUMER,
        attributes=dict(attributes or {}),
        record_exception=False,
    ) as span:
        yield span


@contextmanager
def producer_span(stream: str, subject: str) -> Iterator[Span]:
    """The span of one publish to a stream; `inject` inside it hands it on to the consumer."""
    attributes = {"messaging.system": "nats", "messaging.destination.name": subject}
    with tracer().start_as_current_span(
        f"publish {stream}", kind=SpanKind.PRODUCER, attributes=attributes
    ) as span:
        yield span


@contextmanager
def detached() -> Iterator[None]:
    """Run a block outside any trace (background work that belongs to no message)."""
    token = context.attach(Context())
    try:
        yield
    finally:
        context.detach(token)


def fail(span: Span, exc: BaseException | str) -> None:
    """Mark a span failed with the exception's type (its text may hold data; logs have it)."""
    description = exc if isinstance(exc, str) else type(exc).__name__
    span.set_status(Status(StatusCode.ERROR, description))


def ids() -> dict[str, str]:
    """trace_id/span_id of the current span, for log lines (empty outside a trace)."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return {}
    return {"trace_id": f"{span_context.trace_id:032x}", "span_id": f"{span_context.span_id:016x}"}
