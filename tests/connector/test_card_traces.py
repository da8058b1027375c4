"""A message's card against imsim under a recording tracer: every span event lands on a span
that is still open (the card's background tasks outlive the spans that started them)."""

import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from imgate_common import telemetry
from imgate_common.messages import InboundMessage, RunCompleted, RunDelta, RunStarted, run_id_for
from imgate_connector.rendering import CardRenderer
from tests.connector.conftest import Start
from tests.connector.sim import Sim, final, until
from tests.support.tracing import recording_tracer


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with recording_tracer() as exporter:
        yield exporter


async def test_a_streamed_answer_uses_no_span_after_it_ended(
    sim: Sim, run_adapter: Start, spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="opentelemetry.sdk.trace")
    accepted: list[InboundMessage] = []

    async def stored(message: InboundMessage) -> bool:
        return False

    adapter, health = await run_adapter(stored, card_update_interval_s=0.01)
    cards = CardRenderer(adapter.surface, health, 0.01)

    def opened(message: InboundMessage) -> None:
        accepted.append(message)
        cards.accepted(message)

    adapter.on_accepted = opened
    sent = await sim.send("trace me")

    async def acked() -> bool:
        return await sim.acks_for(sent["msg_id"]) == [200]

    await until(acked)
    [message] = accepted
    run_id = run_id_for(message.platform, message.channel_id, message.message_id)
    common = {"run_id": run_id, "channel_id": message.channel_id, "target": message.target}
    # Each event inside a span of its own, ended when it is handled (as the reply consumer does).
    with telemetry.consumer_span("reply.started", None):
        await cards.handle(RunStarted(**common, seq=1))
    with telemetry.consumer_span("reply.delta", None):
        await cards.handle(RunDelta(**common, seq=2, text="Half", length=4))

    async def text_shown() -> bool:
        return any(a.get("content") == "Half" for a in await sim.answers(sent["msg_id"]))

    await until(text_shown)
    with telemetry.consumer_span("reply.completed", None):
        await cards.handle(RunCompleted(**common, seq=3, text="Half and whole"))
    [answer] = await sim.answers(sent["msg_id"])
    assert final(answer) and answer["content"] == "Half and whole"
    await cards.close()
    ended = [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry")]
    assert ended == [], "spans used after they ended"
    [card] = [s for s in spans.get_finished_spans() if s.name == "card"]
    assert [e.name for e in card.events] == ["first_text_shown"]
    [receive] = [s for s in spans.get_finished_spans() if s.name == "dingtalk.receive"]
    assert card.parent is not None and card.parent.span_id == receive.context.span_id
