"""The inbound publish retried while the bus is away: one publish per message, a conversation's
messages in the order they came, bounded, nothing ACKed before the bus confirmed, and the
connection publishing as before once the bus is back."""

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, PubAck

from imgate_common.bus import INBOUND_STREAM, MSG_ID_HEADER, provision_streams
from imgate_common.messages import ConversationType, InboundMessage, MessageKind, ReplyTarget, Sender
from imgate_connector.inbound import ConversationBusy, InboundPublisher
from tests.connector.conftest import Start
from tests.connector.sim import Sim, until
from tests.support.openai_stub import free_port
from tools.devstack import LocalStack


def inbound(msg_id: str, conversation: str = "c1", channel_id: int = 7) -> InboundMessage:
    target = ReplyTarget(
        platform="dingtalk",
        channel_id=channel_id,
        conversation_id=conversation,
        conversation_type=ConversationType.SINGLE,
        sender_id=f"u-{conversation}",
        inbound_message_id=msg_id,
    )
    return InboundMessage(
        platform="dingtalk",
        channel_id=channel_id,
        message_id=msg_id,
        kind=MessageKind.TEXT,
        text=f"text of {msg_id}",
        platform_type="text",
        sender=Sender(id=f"u-{conversation}"),
        target=target,
    )


class FlakyBus:
    """Stands in for JetStream: refuses every publish until `back` is set, stores each msg id
    once, and counts publishes in flight per message."""

    def __init__(self) -> None:
        self.back = asyncio.Event()
        self.stored: list[str] = []
        self.in_flight: dict[str, int] = {}
        self.most_in_flight = 0
        self.attempts = 0

    async def publish(
        self,
        subject: str,
        payload: bytes,
        headers: dict[str, str],
        timeout: float,  # noqa: ASYNC109 (JetStream's signature)
    ) -> PubAck:
        msg_id = headers[MSG_ID_HEADER].rsplit(":", 1)[-1]  # the platform's message id
        self.attempts += 1
        self.in_flight[msg_id] = self.in_flight.get(msg_id, 0) + 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight[msg_id])
        try:
            await asyncio.sleep(0.01)
            if not self.back.is_set():
                raise nats.errors.NoRespondersError
            duplicate = msg_id in self.stored
            if not duplicate:
                self.stored.append(msg_id)
            return PubAck(stream=INBOUND_STREAM, seq=len(self.stored), duplicate=duplicate)
        finally:
            self.in_flight[msg_id] -= 1


def publisher_on(bus: FlakyBus, retry_for_s: float, max_waiting: int = 16) -> InboundPublisher:
    return InboundPublisher(bus, timeout_s=1.0, retry_for_s=retry_for_s, max_waiting=max_waiting)  # type: ignore[arg-type]


async def test_a_refused_publish_is_retried_and_the_conversations_next_message_waits_for_it() -> None:
    bus = FlakyBus()
    publish = publisher_on(bus, retry_for_s=10)
    first = asyncio.create_task(publish(inbound("m1")))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(publish(inbound("m2")))
    other = asyncio.create_task(publish(inbound("o1", conversation="c2")))
    # Redelivered frames of both, while their publishes are under way: they join, no new publish.
    again = [asyncio.create_task(publish(inbound(m))) for m in ("m1", "m2", "m1")]
    await asyncio.sleep(1.0)
    assert bus.stored == [] and not any(t.done() for t in (first, second, other, *again))
    assert publish.under_way() == 3, "one publish per message, however often it was delivered"
    bus.back.set()
    assert await first is False and await second is False and await other is False
    assert await asyncio.gather(*again) == [True, True, True], "a joined frame is a redelivery"
    assert bus.most_in_flight == 1
    assert bus.stored.index("m1") < bus.stored.index("m2"), "the conversation's order kept"
    assert sorted(bus.stored) == ["m1", "m2", "o1"]
    assert publish.under_way() == 0
    # The same message later (the platform's redelivery after the ACK was lost) is a duplicate.
    assert await publish(inbound("m1")) is True


async def test_the_retry_ends_at_its_deadline_and_the_next_message_then_has_its_turn() -> None:
    bus = FlakyBus()
    publish = publisher_on(bus, retry_for_s=1.5)
    started = time.monotonic()
    first = asyncio.create_task(publish(inbound("m1")))
    await asyncio.sleep(0.5)
    second = asyncio.create_task(publish(inbound("m2")))
    with pytest.raises(nats.errors.NoRespondersError):
        await first
    assert time.monotonic() - started < 3.0, "bounded by the retry window, never forever"
    bus.back.set()
    assert await second is False, "given up on, the earlier message no longer holds the next one"
    assert bus.stored == ["m2"] and publish.under_way() == 0


async def test_a_conversation_with_too_many_messages_waiting_is_refused_not_queued() -> None:
    bus = FlakyBus()
    publish = publisher_on(bus, retry_for_s=5, max_waiting=2)
    waiting = [asyncio.create_task(publish(inbound(f"m{i}"))) for i in range(2)]
    await asyncio.sleep(0.05)
    with pytest.raises(ConversationBusy):
        await publish(inbound("m2"))
    other = asyncio.create_task(publish(inbound("x", conversation="c2")))
    await asyncio.sleep(0.05)
    assert not other.done(), "another conversation is not held to that limit"
    bus.back.set()
    assert await asyncio.gather(*waiting, other) == [False, False, False]
    assert [m for m in bus.stored if m.startswith("m")] == ["m0", "m1"]


# -- against a real nats-server that goes away for 10 s --------------------------------------------


@pytest.fixture
async def sim(imsim: str, http: httpx.AsyncClient) -> Sim:
    """DingTalk redelivering every un-ACKed message after 2 s (the real one: about a minute)."""
    return await Sim.create(imsim, http, redeliver_after=2, disconnect_grace=1)


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[tuple[LocalStack, str]]:
    stack = LocalStack(tmp_path, log_dir=tmp_path / "logs")
    url = stack.start_nats(f"nats://127.0.0.1:{free_port()}")
    try:
        yield stack, url
    finally:
        stack.stop()


@pytest.fixture
async def restartable_bus(own_nats: tuple[LocalStack, str]) -> AsyncIterator[tuple[NATS, JetStreamContext]]:
    _, url = own_nats
    # As the connector connects (runtime.connect_nats), with a quicker reconnect for the test.
    nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
    js = nc.jetstream()
    await provision_streams(js)
    yield nc, js
    await nc.close()


async def stored_ids(js: JetStreamContext, channel_id: int) -> list[str]:
    """The message ids of the channel's stored inbound messages, in stream order."""
    sub = await js.pull_subscribe(
        f"im.inbound.dingtalk.{channel_id}.*",
        stream=INBOUND_STREAM,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=5.0
        ),
    )
    ids: list[str] = []
    try:
        while True:
            try:
                batch = await sub.fetch(100, timeout=0.5)
            except TimeoutError:
                break
            ids += [InboundMessage.model_validate_json(m.data).message_id for m in batch]
    finally:
        await sub.unsubscribe()
    return ids


async def test_redelivered_every_2_s_while_nats_is_down_10_s_nothing_lost_doubled_or_reordered(
    own_nats: tuple[LocalStack, str],
    restartable_bus: tuple[NATS, JetStreamContext],
    sim: Sim,
    run_adapter: Start,
) -> None:
    stack, url = own_nats
    nc, js = restartable_bus
    publisher = InboundPublisher(js, timeout_s=1.0, retry_for_s=20.0)
    most_under_way = 0
    adapter, health = await run_adapter(publisher)  # type: ignore[arg-type]

    async def acked(msg_ids: list[str]) -> bool:
        return all([200 in await sim.acks_for(m) for m in msg_ids])

    before = (await sim.send("before the outage", sender_staff_id="alice"))["msg_id"]
    await until(lambda: acked([before]))

    stack.terminate("nats")
    down_at = time.monotonic()
    # Three messages of one conversation, two of another, a moment apart.
    plan = [("alice", 0), ("bob", 0), ("alice", 1), ("alice", 2), ("bob", 1)]
    sent: dict[str, list[str]] = {"alice": [], "bob": []}
    for sender, n in plan:
        msg = await sim.send(f"{sender} during {n}", sender_staff_id=sender)
        sent[sender].append(msg["msg_id"])
        await asyncio.sleep(0.3)
    during = sent["alice"] + sent["bob"]
    while time.monotonic() - down_at < 10:
        for msg_id in during:
            assert 200 not in await sim.acks_for(msg_id), "ACKed while the bus could not store it"
        most_under_way = max(most_under_way, publisher.under_way())
        await asyncio.sleep(0.25)
    deliveries = [d for d in await sim.get("deliveries") if d["msg_id"] in during]
    assert len(deliveries) >= 3 * len(during), "imsim redelivered every 2 s meanwhile"
    assert most_under_way <= len(during), "one publish per message, however often it came"

    stack.start_nats(url)  # the same port and store: the bus is back
    back_at = time.monotonic()
    await until(lambda: acked(during), within=15)
    assert time.monotonic() - back_at < 12, "answered once the bus is back, not at a redelivery"

    # The connection publishes as before.
    after = (await sim.send("after the outage", sender_staff_id="alice"))["msg_id"]
    took = await until(lambda: acked([after]), within=5)
    assert took < 3

    stored = await stored_ids(js, adapter.spec.id)
    assert sorted(stored) == sorted([before, *during, after]), "nothing lost, nothing stored twice"
    for sender in ("alice", "bob"):
        mine = [m for m in stored if m in sent[sender]]
        assert mine == sent[sender], f"{sender}'s messages stored in the order they were sent"
    assert stored.index(after) > max(stored.index(m) for m in sent["alice"])
    assert publisher.under_way() == 0
    assert health.publish_failures == 0
    assert nc.is_connected
