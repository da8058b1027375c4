"""Tracing set-up, trace context across the bus, trace ids in log lines, the /metrics listener."""

from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import Counter

from imgate_common import telemetry
from imgate_common.logs import add_trace_ids
from imgate_common.metrics import MetricsServer
from tests.support.tracing import recording_tracer

OTEL_VARS = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in OTEL_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """A private provider whose tracer the module functions use for the test's duration."""
    with recording_tracer() as exporter:
        yield exporter


def test_no_endpoint_means_no_exporter(clean_env: pytest.MonkeyPatch) -> None:
    assert telemetry._exporter_name() == "none"


def test_an_endpoint_turns_otlp_on_over_http_by_default(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert telemetry._exporter_name() == "otlp"
    assert isinstance(telemetry._otlp_exporter(), HttpExporter)


def test_grpc_is_chosen_by_the_standard_protocol_variable(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:4317")
    clean_env.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
    assert telemetry._exporter_name() == "otlp"
    exporter = telemetry._otlp_exporter()
    assert isinstance(exporter, GrpcExporter)
    exporter.shutdown()


def test_the_named_exporter_wins_and_nonsense_is_refused(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    clean_env.setenv("OTEL_TRACES_EXPORTER", "console")
    assert telemetry._exporter_name() == "console"
    clean_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")
    with pytest.raises(ValueError, match="carrier-pigeon"):
        telemetry._otlp_exporter()
    clean_env.setenv("OTEL_TRACES_EXPORTER", "zipkin-ish")
    with pytest.raises(ValueError, match="zipkin-ish"):
        telemetry.configure_tracing("test")


def test_the_trace_crosses_the_bus_in_the_headers(spans: InMemorySpanExporter) -> None:
    with telemetry.producer_span("IM_INBOUND", "im.inbound.dingtalk.1.0") as producer:
        headers = telemetry.inject({"Nats-Msg-Id": "x"})
    assert headers["Nats-Msg-Id"] == "x" and headers["traceparent"]
    with telemetry.consumer_span("process", headers, {"imgate.run_id": "r1"}) as consumer:
        carried = telemetry.carrier()
    produced, consumed = spans.get_finished_spans()
    assert consumed.parent is not None and consumed.parent.span_id == produced.context.span_id
    assert consumed.context.trace_id == producer.get_span_context().trace_id
    assert consumed.attributes is not None and consumed.attributes["imgate.run_id"] == "r1"
    # What is stored with queued work names the consumer span as the parent-to-be.
    assert f"{consumer.get_span_context().span_id:016x}" in carried["traceparent"]


def test_without_headers_a_consumer_starts_a_trace_of_its_own(spans: InMemorySpanExporter) -> None:
    with telemetry.consumer_span("process", None):
        pass
    with telemetry.consumer_span("process", {"traceparent": "garbage"}):
        pass
    first, second = spans.get_finished_spans()
    assert first.parent is None and second.parent is None
    assert first.context.trace_id != second.context.trace_id


def test_message_text_reaches_spans_only_when_turned_on(spans: InMemorySpanExporter) -> None:
    with telemetry.tracer().start_as_current_span("off") as span:
        telemetry.set_content(span, "imgate.message.text", "private words")
    telemetry._state["content"] = True
    try:
        with telemetry.tracer().start_as_current_span("on") as span:
            telemetry.set_content(span, "imgate.message.text", "private words")
    finally:
        telemetry._state["content"] = False
    off, on = spans.get_finished_spans()
    assert "imgate.message.text" not in (off.attributes or {})
    assert (on.attributes or {})["imgate.message.text"] == "private words"


def test_log_lines_name_their_trace_and_span(spans: InMemorySpanExporter) -> None:
    assert add_trace_ids(None, "info", {"event": "outside"}) == {"event": "outside"}
    with telemetry.tracer().start_as_current_span("work") as span:
        # The processor reads the globally current span: make it this one.
        token = trace.use_span(span)
        with token:
            line = add_trace_ids(None, "info", {"event": "inside"})
    context = span.get_span_context()
    assert line["trace_id"] == f"{context.trace_id:032x}"
    assert line["span_id"] == f"{context.span_id:016x}"


def test_metrics_are_served_and_a_taken_port_is_survived() -> None:
    Counter("imgate_test_things", "Things counted by the telemetry test").inc(3)
    server = MetricsServer(0, "127.0.0.1")
    try:
        assert server.port
        body = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5).text
        assert "imgate_test_things_total 3.0" in body
        # A second listener on the same port logs why and serves nothing; the service goes on.
        clash = MetricsServer(server.port, "127.0.0.1")
        assert clash.port is None
        clash.close()
    finally:
        server.close()
    again = MetricsServer(server.port, "127.0.0.1")  # closed: the port can be served again
    try:
        assert again.port == server.port
    finally:
        again.close()


def test_metrics_can_be_turned_off() -> None:
    off = MetricsServer(-1, "127.0.0.1")
    assert off.port is None
    off.close()


def test_client_spans_keep_urls_without_their_query(spans: InMemorySpanExporter) -> None:
    webhook = "https://oapi.dingtalk.com/robot/sendBySession?session=c0ffee-secret"
    with telemetry.tracer().start_as_current_span("POST") as span:
        span.set_attribute("http.url", webhook)  # as the httpx instrumentation records it
        telemetry._url_without_query(span, SimpleNamespace(url=webhook))
    [finished] = spans.get_finished_spans()
    attributes = dict(finished.attributes or {})
    assert attributes["http.url"] == attributes["url.full"] == "https://oapi.dingtalk.com/robot/sendBySession"
    assert "c0ffee-secret" not in repr(attributes)
    assert telemetry.without_query("http://user:pw@host:8080/a?b=c") == "http://host:8080/a"


def test_without_an_exporter_spans_record_nothing_but_keep_their_ids(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setitem(telemetry._state, "recording", True)
    provider = telemetry.configure_tracing("test")
    try:
        assert not telemetry.recording()
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("root") as root:
            headers = telemetry.inject({})
            line = add_trace_ids(None, "info", {"event": "inside"})
        assert not root.is_recording() and root.get_span_context().is_valid
        assert line["trace_id"] == f"{root.get_span_context().trace_id:032x}"
        # The next service continues the same trace from the bus headers.
        child = tracer.start_span("child", context=telemetry.extract(headers))
        assert not child.is_recording()
        assert child.get_span_context().trace_id == root.get_span_context().trace_id
    finally:
        provider.shutdown()


def test_an_exporter_or_a_processor_turns_recording_on(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setitem(telemetry._state, "recording", False)
    exporter = InMemorySpanExporter()
    provider = telemetry.configure_tracing("test", processor=SimpleSpanProcessor(exporter))
    try:
        assert telemetry.recording()
        with provider.get_tracer("test").start_as_current_span("work") as span:
            assert span.is_recording()
        assert [s.name for s in exporter.get_finished_spans()] == ["work"]
    finally:
        provider.shutdown()
