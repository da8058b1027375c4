"""Which trace a run continues: its publisher's, unless it waited in its conversation's queue and
was published by the runner that finished the run before it."""

from types import SimpleNamespace
from typing import Any

from opentelemetry.sdk.trace import TracerProvider

from imgate_common import telemetry
from imgate_common.messages import RunRequest
from imgate_runner.main import run_parent
from tests.support.factories import reply_target

tracer = TracerProvider().get_tracer("test")


def traced_carrier() -> dict[str, str]:
    with tracer.start_as_current_span("somewhere"):
        return telemetry.carrier()


def request(trace_context: dict[str, str]) -> RunRequest:
    return RunRequest(
        run_id="r", channel_id=1, conversation_id="c1", agent_id=1, user_id=1, user_message_id=1,
        text="hi", target=reply_target(), trace_context=trace_context,
    )  # fmt: skip


def message(headers: dict[str, str] | None) -> Any:
    return SimpleNamespace(headers=headers)


def trace_id(carrier: dict[str, str]) -> str:
    return carrier["traceparent"].split("-")[1]


def test_a_run_published_by_the_router_continues_from_the_publish() -> None:
    routed = traced_carrier()
    with tracer.start_as_current_span("router publish", context=telemetry.extract(routed)):
        headers = telemetry.carrier()  # the publish span: a child in the same trace
    assert run_parent(request(routed), message(headers)) == headers


def test_a_run_handed_over_by_a_runner_keeps_its_own_message_trace() -> None:
    own, previous_run = traced_carrier(), traced_carrier()
    assert trace_id(own) != trace_id(previous_run)
    assert run_parent(request(own), message(previous_run)) == own


def test_requests_without_a_stored_context_use_the_headers() -> None:
    headers = traced_carrier()
    assert run_parent(request({}), message(headers)) == headers
    assert run_parent(request({}), message(None)) == {}
