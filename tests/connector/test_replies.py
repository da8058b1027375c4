"""The reply consumer against a real nats-server and imsim: a final the platform never takes
is tried for as long as the consumer's spec says, then filed as a dead letter, counted, shown
on the channel's status, and its card ends with a sentence once the platform is back."""

import asyncio
import base64
import contextlib
import dataclasses

import httpx
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from imgate_common.bus import (
    DEAD_LETTERS_STREAM,
    MSG_ID_HEADER,
    REPLIES_STREAM,
    dead_letter_subject,
    reply_subject,
)
from imgate_common.consumers import reply_consumer_spec
from imgate_common.errors import PlatformError
from imgate_common.messages import DeadLetter, InboundMessage, ReplyEvent, RunCompleted, run_id_for
from imgate_common.status import ChannelStatusStore
from imgate_connector.lease import LeaseExpired
from imgate_connector.mending import MendPolicy
from imgate_connector.rendering import CardRenderer
from imgate_connector.replies import POISON_TRIES, ReplyConsumer, may_pass
from imgate_connector.wording import WORDINGS
from tests.connector.conftest import Start
from tests.connector.sim import Sim, until


def undeliverable_count() -> float:
    return REGISTRY.get_sample_value("imgate_replies_undeliverable_total", {"platform": "dingtalk"}) or 0.0


async def dead_letters(js: JetStreamContext, durable: str) -> list[DeadLetter]:
    sub = await js.pull_subscribe(
        dead_letter_subject(durable),
        stream=DEAD_LETTERS_STREAM,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE),
    )
    try:
        msgs = await sub.fetch(10, timeout=0.5)
    except TimeoutError:
        msgs = []
    finally:
        await sub.unsubscribe()
    return [DeadLetter.model_validate_json(m.data) for m in msgs]


async def consumer_exists(js: JetStreamContext, durable: str) -> bool:
    try:
        await js.consumer_info(REPLIES_STREAM, durable)
    except NotFoundError:
        return False
    return True


async def publish_final(js: JetStreamContext, event: RunCompleted) -> None:
    await js.publish(
        reply_subject(event.channel_id, event.run_id),
        event.model_dump_json().encode(),
        stream=REPLIES_STREAM,
        headers={MSG_ID_HEADER: f"{event.run_id}:{event.attempt}:completed:{event.seq}"},
    )


async def test_an_answer_no_path_takes_is_dead_lettered_reported_and_its_card_ends_failed(
    sim: Sim,
    run_adapter: Start,
    bus: tuple[NATS, JetStreamContext],
    redis_client: Redis,
    key_prefix: str,
) -> None:
    _, js = bus
    accepted: list[InboundMessage] = []

    async def stored(message: InboundMessage) -> bool:
        return False

    adapter, health = await run_adapter(stored)
    channel_id = adapter.spec.id
    cards = CardRenderer(adapter.surface, health, 0.05, mend=MendPolicy(first_retry_s=0.1, max_retry_s=0.2))

    def opened(message: InboundMessage) -> None:
        accepted.append(message)
        cards.accepted(message)

    adapter.on_accepted = opened
    sent = await sim.send("will this arrive?")

    async def thinking() -> bool:
        return [a["kind"] for a in await sim.answers(sent["msg_id"])] == ["card"]

    await until(thinking)
    await sim.faults(card_down=True, messages_down=True)  # the platform takes no answer at all
    [message] = accepted
    run_id = run_id_for(message.platform, channel_id, message.message_id)
    spec = dataclasses.replace(reply_consumer_spec(channel_id, 5.0), max_tries=3, backoff_s=(0.1,))
    status = ChannelStatusStore(redis_client, key_prefix)
    before = undeliverable_count()
    consumer = ReplyConsumer(js, channel_id, cards, ack_wait_s=5.0, spec=spec, status=status)
    consuming = asyncio.create_task(consumer.run())
    try:
        event = RunCompleted(run_id=run_id, channel_id=channel_id, seq=9, target=message.target, text="42")

        await until(lambda: consumer_exists(js, spec.durable))  # the consumer starts at new events
        await publish_final(js, event)

        async def filed() -> bool:
            return bool(await dead_letters(js, spec.durable))

        await until(filed, within=30)
        [letter] = await dead_letters(js, spec.durable)
        assert letter.run_id == run_id and letter.deliveries == 3 and letter.stream == REPLIES_STREAM
        assert RunCompleted.model_validate_json(base64.b64decode(letter.data_b64)).text == "42"
        assert undeliverable_count() == before + 1
        reported = await status.read(channel_id, enabled=True)
        assert reported.last_error is not None and "undeliverable" in reported.last_error

        await sim.faults(card_down=False, messages_down=False)  # the platform is back

        async def card_ended() -> bool:
            [card] = await sim.answers(sent["msg_id"])
            return bool(card["finalized"]) or card["flow_status"] == "5"

        await until(card_ended, within=10)
        [card] = await sim.answers(sent["msg_id"])
        assert card["kind"] == "card" and card["flow_status"] == "5"
        assert card["content"] == WORDINGS["zh"].undelivered, "the user is told, not left with thinking…"
    finally:
        consuming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consuming
        await cards.close()
        with contextlib.suppress(Exception):
            await js.delete_consumer(REPLIES_STREAM, spec.durable)


async def test_a_final_that_fails_the_same_way_every_time_is_dead_lettered_after_a_few_tries(
    sim: Sim,
    run_adapter: Start,
    bus: tuple[NATS, JetStreamContext],
    redis_client: Redis,
    key_prefix: str,
) -> None:
    """A poison event (here a renderer bug on one run's final) is not given the half hour a
    platform outage gets: after POISON_TRIES it is filed, its card ends with the sentence, and
    the channel's other answers never wait for it."""
    _, js = bus
    accepted: list[InboundMessage] = []

    async def stored(message: InboundMessage) -> bool:
        return False

    adapter, health = await run_adapter(stored)
    channel_id = adapter.spec.id
    poisoned: set[str] = set()

    class BuggyRenderer(CardRenderer):
        async def handle(self, event: ReplyEvent) -> None:
            if event.run_id in poisoned and isinstance(event, RunCompleted):
                raise KeyError("msgContent")
            await super().handle(event)

    cards = BuggyRenderer(adapter.surface, health, 0.05, mend=MendPolicy(first_retry_s=0.1, max_retry_s=0.2))

    def opened(message: InboundMessage) -> None:
        accepted.append(message)
        cards.accepted(message)

    adapter.on_accepted = opened
    bad = await sim.send("the poisoned one", sender_staff_id="p1")
    good = await sim.send("the healthy one", sender_staff_id="h1")

    async def thinking() -> bool:
        return all([[a["kind"] for a in await sim.answers(m["msg_id"])] == ["card"] for m in (bad, good)])

    await until(thinking)
    runs = {m.message_id: run_id_for(m.platform, channel_id, m.message_id) for m in accepted}
    poisoned.add(runs[bad["msg_id"]])
    spec = reply_consumer_spec(channel_id, 5.0)  # the real policy: 36 tries for what may pass
    assert spec.max_tries > POISON_TRIES
    consumer = ReplyConsumer(js, channel_id, cards, ack_wait_s=5.0, spec=spec)
    consuming = asyncio.create_task(consumer.run())
    try:
        await until(lambda: consumer_exists(js, spec.durable))
        for message in accepted:
            run_id = runs[message.message_id]
            await publish_final(
                js,
                RunCompleted(
                    run_id=run_id,
                    channel_id=channel_id,
                    seq=9,
                    target=message.target,
                    text=f"answer {run_id}",
                ),
            )

        async def answered() -> bool:
            [card] = await sim.answers(good["msg_id"])
            return bool(card["finalized"]) and card["flow_status"] == "3"

        await until(answered, within=5)

        async def mine() -> list[DeadLetter]:  # the channel id (durable) is reused across tests
            return [d for d in await dead_letters(js, spec.durable) if d.run_id in runs.values()]

        async def filed() -> bool:
            return bool(await mine())

        await until(filed, within=30)
        [letter] = await mine()
        assert letter.run_id == runs[bad["msg_id"]] and letter.deliveries == POISON_TRIES
        assert "KeyError" in letter.reason and letter.error_type == "KeyError" and letter.permanent

        async def card_ended() -> bool:
            [card] = await sim.answers(bad["msg_id"])
            return card["flow_status"] == "5"

        await until(card_ended, within=10)
        [card] = await sim.answers(bad["msg_id"])
        assert card["content"] == WORDINGS["zh"].undelivered, "the user is told, not left with thinking…"
    finally:
        consuming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consuming
        await cards.close()
        with contextlib.suppress(Exception):
            await js.delete_consumer(REPLIES_STREAM, spec.durable)


def test_failures_of_what_is_out_of_reach_may_pass_others_do_not() -> None:
    assert may_pass(PlatformError("card API 503", 503, "ServiceUnavailable"))
    assert may_pass(httpx.ConnectError("refused"))
    assert may_pass(TimeoutError())
    assert may_pass(LeaseExpired("moved"))
    assert not may_pass(KeyError("msgContent"))
    assert not may_pass(ValueError("cannot render"))
