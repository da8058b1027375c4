"""DingTalk's reply surface against imsim: AI card calls, throttling, tokens, plain replies."""

import asyncio
import time
from typing import Any

import pytest

from imgate_common.messages import InboundMessage, ReplyTarget
from imgate_connector.platforms.base import CardExists, CardsUnavailable
from imgate_connector.platforms.dingtalk.adapter import DingTalkAdapter
from tests.connector.conftest import Start
from tests.connector.sim import Sim, until


async def target_of(sim: Sim, run_adapter: Start, **message: Any) -> tuple[DingTalkAdapter, ReplyTarget]:
    """A connected adapter, and where to answer a message the user just sent."""
    got: list[InboundMessage] = []

    async def sink(inbound: InboundMessage) -> None:
        got.append(inbound)

    adapter, _ = await run_adapter(sink, card_rate_limit_patience_s=20)
    await sim.send(message.pop("text", "hi"), **message)

    async def received() -> bool:
        return bool(got)

    await until(received)
    return adapter, got[0].target


async def card(sim: Sim, card_id: str) -> dict[str, Any]:
    return dict(await sim.get(f"cards/{card_id}"))


async def test_a_card_streams_and_finishes(sim: Sim, run_adapter: Start) -> None:
    adapter, target = await target_of(sim, run_adapter)
    surface = adapter.surface
    await surface.open_card("run-1", target)
    assert await surface.update_card("run-1", "Hel")
    assert await surface.update_card("run-1", "Hello")
    before = (await sim.counters())["api_calls"]["by_route"]
    await surface.close_card("run-1", "Hello world", failed=False)
    after = (await sim.counters())["api_calls"]["by_route"]
    shown = await card(sim, "run-1")
    assert shown["content"] == "Hello world" and shown["flow_status"] == "3" and shown["finalized"]
    ops = [u["op"] for u in shown["updates"]]
    # The first text switches the card to "inputing" in the same call: one call after the first
    # token. The final text and the finished state are one call too.
    assert ops == ["create", "deliver", "update", "full", "update"]
    first, last = shown["updates"][2], shown["updates"][-1]
    assert first["flow_status"] == "2" and first["len"] == len("Hel")
    assert last["flow_status"] == "3" and last["finalize"] and last["len"] == len("Hello world")
    assert {route: after[route] - before.get(route, 0) for route in after} == {
        route: int(route == "PUT /v1.0/card/instances") for route in after
    }
    with pytest.raises(CardExists):
        await surface.open_card("run-1", target)


async def test_a_failed_run_shows_failed(sim: Sim, run_adapter: Start) -> None:
    adapter, target = await target_of(sim, run_adapter)
    await adapter.surface.open_card("run-f", target)
    await adapter.surface.update_card("run-f", "Half an ans")
    await adapter.surface.close_card("run-f", "The AI service took too long.", failed=True)
    shown = await card(sim, "run-f")
    assert shown["flow_status"] == "5" and shown["error"] and shown["finalized"]
    assert shown["content"] == "The AI service took too long."
    assert [u["op"] for u in shown["updates"]] == ["create", "deliver", "update", "update"]


async def test_a_continuation_card_is_created_finished_in_one_call(sim: Sim, run_adapter: Start) -> None:
    adapter, target = await target_of(sim, run_adapter)
    await adapter.surface.post_card("run-c-2", target, "…the rest of the answer")
    shown = await card(sim, "run-c-2")
    assert shown["content"] == "…the rest of the answer" and shown["flow_status"] == "3"
    assert shown["finalized"] and shown["delivered"]
    assert [u["op"] for u in shown["updates"]] == ["create", "deliver"]
    # Posted again (a redelivered final): the card is there, and is finished again, not doubled.
    await adapter.surface.post_card("run-c-2", target, "…the rest of the answer")
    shown = await card(sim, "run-c-2")
    assert [u["op"] for u in shown["updates"]] == ["create", "deliver", "update"]
    assert shown["finalized"] and shown["content"] == "…the rest of the answer"
    [conversation] = await sim.get("conversations")
    assert [i["kind"] for i in conversation["items"] if i["kind"] != "user"] == ["card"]


async def test_throttled_calls_back_off_retry_and_are_counted(sim: Sim, run_adapter: Start) -> None:
    adapter, target = await target_of(sim, run_adapter)
    await sim.faults(card_qps_limit=2)
    started = time.monotonic()
    await asyncio.gather(*(adapter.surface.open_card(f"q-{i}", target) for i in range(8)))
    assert time.monotonic() - started >= 2.5, "8 calls at 2/s"
    cards = [await card(sim, f"q-{i}") for i in range(8)]
    assert all(c["delivered"] for c in cards)
    assert adapter.health.rate_limit_hits >= 1
    assert (await sim.counters())["throttled"]["403"] == adapter.health.rate_limit_hits


async def test_429_is_throttling_too(sim: Sim, run_adapter: Start) -> None:
    adapter, target = await target_of(sim, run_adapter)
    await sim.faults(card_qps_limit=1, card_qps_mode=429)
    await asyncio.gather(*(adapter.surface.open_card(f"t-{i}", target) for i in range(3)))
    assert adapter.health.rate_limit_hits >= 1


async def test_an_expired_token_is_replaced_and_the_call_repeated(sim: Sim, run_adapter: Start) -> None:
    adapter, target = await target_of(sim, run_adapter)
    await adapter.surface.open_card("tok-1", target)
    await sim.post("tokens/expire")
    await adapter.surface.open_card("tok-2", target)
    counters = await sim.counters()
    assert counters["tokens_issued"] == 2
    assert counters["api_calls"]["by_outcome"]["unauthorized"] == 1


async def test_card_calls_that_keep_failing_switch_cards_off_for_a_while(
    sim: Sim, run_adapter: Start
) -> None:
    adapter, target = await target_of(sim, run_adapter)
    await sim.faults(card_down=True)
    with pytest.raises(Exception, match="503"):
        await adapter.surface.open_card("down-1", target)
    started = time.monotonic()
    with pytest.raises(CardsUnavailable):
        await adapter.surface.open_card("down-2", target)
    assert time.monotonic() - started < 0.1, "no more waiting on a service that is down"
    assert not await adapter.surface.update_card("down-1", "x")


async def test_plain_reply_goes_through_the_session_webhook(sim: Sim, run_adapter: Start) -> None:
    adapter, target = await target_of(sim, run_adapter)
    await adapter.surface.send_text(target, "**bold** answer", markdown=True)
    [conversation] = await sim.get("conversations")
    [answer] = [i for i in conversation["items"] if i["kind"] != "user"]
    assert answer["kind"] == "markdown" and answer["via"] == "webhook"
    assert answer["text"] == "**bold** answer" and answer["title"] == "bold** answer"


async def test_a_group_reply_mentions_the_sender(sim: Sim, run_adapter: Start) -> None:
    adapter, target = await target_of(
        sim,
        run_adapter,
        text="@bot hi",
        conversation_type="2",
        conversation_title="Ops",
        sender_staff_id="kim",
    )
    await adapter.surface.send_text(target, "Hello Kim")
    [conversation] = await sim.get("conversations")
    [answer] = [i for i in conversation["items"] if i["kind"] != "user"]
    assert answer["at_user_ids"] == ["kim"]


async def test_an_expired_webhook_falls_back_to_the_robot_api(sim: Sim, run_adapter: Start) -> None:
    adapter, target = await target_of(sim, run_adapter, sender_staff_id="lee")
    await sim.post("sessions/expire")
    await adapter.surface.send_text(target, "still reaches you", markdown=True)
    [conversation] = await sim.get("conversations")
    [answer] = [i for i in conversation["items"] if i["kind"] != "user"]
    assert answer["via"] == "batchSend" and answer["text"] == "still reaches you"
