"""One message, one trace: the product as processes exports its spans over OTLP/HTTP to a
collector in this test, and serves Prometheus metrics that the test scrapes."""

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.otlp_collector import Collector, SpanRecord, serve_collector
from tools.fleet import Fleet, FleetConfig, Sent, collect_outcomes
from tools.modelsim import free_port

pytestmark = pytest.mark.e2e

SERVICES = ("imgate-connector", "imgate-router", "imgate-agent-runner")
SECRET_TEXT = "my card number is 4111"


@dataclass
class Traced:
    fleet: Fleet
    collector: Collector
    metrics: dict[str, int]  # service → its /metrics port
    sent: Sent


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    metrics = {"connector": free_port(), "router": free_port(), "agent-runner": free_port()}
    with serve_collector() as (collector, endpoint):
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "CONNECTOR_METRICS_PORT": str(metrics["connector"]),
            "ROUTER_METRICS_PORT": str(metrics["router"]),
            "RUNNER_METRICS_PORT": str(metrics["agent-runner"]),
            "IMGATE_METRICS_HOST": "127.0.0.1",
        }
        config = FleetConfig(model_ttft_ms=50, model_tokens_per_s=200, answer_tokens=12, extra_env=env)
        with Fleet(config, Path(tmp_path_factory.mktemp("traced"))) as fleet:
            sent = fleet.send(fleet.client_ids[0], "trace-conversation", SECRET_TEXT)
            report = collect_outcomes(fleet.imsim, [sent], timeout_s=30)
            assert not report.lost and not report.doubled, fleet.logs()
            yield Traced(fleet, collector, metrics, sent)


def message_trace(collector: Collector, msg_id: str, timeout: float = 15.0) -> list[SpanRecord]:
    """The spans of the message's trace, once every span's parent has arrived as well (spans are
    exported in batches, in the order they end, by four processes)."""
    deadline = time.monotonic() + timeout
    spans: list[SpanRecord] = []
    while time.monotonic() < deadline:
        roots = [
            s
            for s in collector.snapshot()
            if s.name == "dingtalk.receive" and s.attributes.get("imgate.message_id") == msg_id
        ]
        if roots:
            spans = [s for s in collector.snapshot() if s.trace_id == roots[0].trace_id]
            ids = {s.span_id for s in spans}
            complete = all(not s.parent_span_id or s.parent_span_id in ids for s in spans)
            if complete and any(s.name == "reply.completed" for s in spans):
                return spans
        time.sleep(0.2)
    raise AssertionError(f"no complete trace for {msg_id}: {sorted((s.service, s.name) for s in spans)}")


def ancestors(span: SpanRecord, by_id: dict[str, SpanRecord]) -> list[SpanRecord]:
    chain = []
    while span.parent_span_id:
        span = by_id[span.parent_span_id]
        chain.append(span)
    return chain


def test_one_message_is_one_trace_through_every_service(traced: Traced) -> None:
    spans = message_trace(traced.collector, traced.sent.msg_id)
    by_id = {s.span_id: s for s in spans}
    names = {(s.service, s.name) for s in spans}

    roots = [s for s in spans if not s.parent_span_id]
    assert [r.name for r in roots] == ["dingtalk.receive"], roots
    root = roots[0]
    assert root.service == "imgate-connector"
    assert {s.service for s in spans} >= set(SERVICES)

    expected = {
        ("imgate-connector", "publish IM_INBOUND"),
        ("imgate-router", "identity.resolve"),
        ("imgate-agent-runner", "run"),
        ("imgate-agent-runner", "model.stream openai"),
        ("imgate-agent-runner", "publish AGENT_REPLIES"),
        ("imgate-connector", "reply.started"),
        ("imgate-connector", "reply.completed"),
    }
    assert expected <= names, sorted(names)
    # Card calls: the thinking card at accept time, updates while streaming, the final one.
    card_calls = [s for s in spans if s.name.startswith("dingtalk ") and "/card/" in s.name]
    assert len(card_calls) >= 2, sorted(names)
    assert all(s.attributes.get("http.response.status_code") == 200 for s in card_calls)

    # The parent links tell the story: the run hangs below the router's handling of the
    # message, which hangs below the connector's publish, below the receipt.
    run = next(s for s in spans if s.name == "run")
    run_chain = [(s.service, s.name) for s in ancestors(run, by_id)]
    assert ("imgate-connector", "publish IM_INBOUND") in run_chain, run_chain
    assert any(service == "imgate-router" for service, _ in run_chain), run_chain
    assert run_chain[-1] == ("imgate-connector", "dingtalk.receive")
    model = next(s for s in spans if s.name == "model.stream openai")
    assert model.parent_span_id == run.span_id
    assert model.attributes["gen_ai.request.model"]
    assert "first_token" in model.events and model.attributes["imgate.ttft_ms"] >= 0
    assert model.kind == 3  # CLIENT: the call out to the model server
    completed = next(s for s in spans if s.name == "reply.completed")
    assert any(s.service == "imgate-agent-runner" for s in ancestors(completed, by_id))

    # Ids on the spans, no message text (IMGATE_TRACE_CONTENT is off) anywhere.
    assert root.attributes["imgate.channel_id"] == traced.fleet.channel_ids[traced.sent.client_id]
    assert root.attributes["imgate.message_type"] == "text"
    assert run.attributes["imgate.run_id"] == root.attributes["imgate.run_id"]
    assert all(SECRET_TEXT not in repr(s.attributes) for s in spans)


def test_log_lines_carry_the_trace_id(traced: Traced) -> None:
    spans = message_trace(traced.collector, traced.sent.msg_id)
    trace_id = spans[0].trace_id
    for service in ("connector", "router", "agent-runner"):
        log = (traced.fleet.log_dir / f"{service}-1.log").read_text(errors="replace")
        assert f"trace_id={trace_id}" in log, f"{service} never logged trace {trace_id}"


def scrape(port: int) -> dict[str, float]:
    """Every sample as `name{label=value,...}` → value."""
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def value(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum over the samples of `name` whose labels include `labels`."""
    wanted = [f"{k}={v}" for k, v in labels.items()]
    return sum(
        v
        for key, v in samples.items()
        if key.split("{", 1)[0] == name and all(w in key.split("{", 1)[1] for w in wanted)
    )


def test_every_service_serves_its_metrics(traced: Traced) -> None:
    channel_id = str(traced.fleet.channel_ids[traced.sent.client_id])
    connector = scrape(traced.metrics["connector"])
    assert value(connector, "imgate_inbound_messages_total", result="published", type="text") >= 1
    assert value(connector, "imgate_inbound_ack_seconds_count") >= 1
    assert value(connector, "imgate_first_visible_text_seconds_count") >= 1
    assert value(connector, "imgate_final_answer_seconds_count") >= 1
    assert value(connector, "imgate_platform_api_calls_total", status="200") >= 2
    assert value(connector, "imgate_channel_connected", channel_id=channel_id) == 1
    assert value(connector, "imgate_channel_lease_changes_total", change="acquired") >= 1

    router = scrape(traced.metrics["router"])
    assert value(router, "imgate_router_messages_total", result="run_requested") >= 1
    assert value(router, "imgate_router_identity_lookups_total", mapper="auto", result="resolved") >= 1
    assert value(router, "imgate_router_queue_admissions_total", outcome="start") >= 1
    # FastStream's middleware: bus-level figures of the router's consumers.
    assert any(key.startswith("imgate_bus_") for key in router), sorted(router)[:20]

    runner = scrape(traced.metrics["agent-runner"])
    assert value(runner, "imgate_runs_finished_total", outcome="completed", provider="openai") >= 1
    assert value(runner, "imgate_run_time_to_first_token_seconds_count", provider="openai") >= 1
    assert value(runner, "imgate_run_wait_seconds_count") >= 1
    assert value(runner, "imgate_runs_in_flight") == 0
