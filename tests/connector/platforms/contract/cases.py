"""The contract every platform's adapter keeps, whatever its frames and cards look like.

A platform's tests subclass `PlatformContract` once, as `Test<Platform>Contract`, with a
`driver` fixture returning its `PlatformDriver`; pytest then runs every case below against it.
The cases speak only through the driver and the core's interfaces (`PlatformAdapter`,
`ReplySurface`), never of a platform's frames.
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.messages import ChannelState, InboundMessage, ReplyTarget
from imgate_common.secrets import SecretBox
from imgate_connector.platforms.base import CardExists, PlatformAdapter
from tests.connector.platforms.contract.driver import Answer, PlatformDriver
from tests.connector.sim import until
from tests.connector.stack import InstantAgent, connector, echo, new_channel_ids

# A connector answering on a channel of the driver's app (see `PlatformContract.answering`).
Answering = Callable[[], contextlib.AbstractAsyncContextManager[InstantAgent]]

# Long enough for a frame the adapter took to have been ACKed, had it ACKed too early.
ACK_WINDOW_S = 0.3


def held(condition: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return condition()

    return check


async def acked_once(driver: PlatformDriver, msg_id: str) -> None:
    async def acked() -> bool:
        return await driver.acked(msg_id) == 1

    await until(acked)


async def each_answered(driver: PlatformDriver, msg_ids: list[str], within: float = 30) -> None:
    async def done() -> bool:
        shown = [await driver.answers(m) for m in msg_ids]
        return all(a and all(x.final for x in a) for a in shown)

    await until(done, within=within)


class PlatformContract:
    """Every platform passes these cases (see the module's docstring)."""

    # -- inbound: ACK only what the bus holds ------------------------------------------------

    async def test_a_message_is_acked_only_after_the_bus_confirmed_it(self, driver: PlatformDriver) -> None:
        gate = asyncio.Event()
        received: list[InboundMessage] = []

        async def slow_bus(message: InboundMessage) -> None:
            received.append(message)
            await gate.wait()

        await driver.start(slow_bus)
        msg_id = await driver.user_sends("hello")
        await until(held(lambda: bool(received)))
        await asyncio.sleep(ACK_WINDOW_S)
        assert await driver.acked(msg_id) == 0, "ACKed before the bus confirmed"
        gate.set()
        await acked_once(driver, msg_id)
        [message] = received
        assert (message.platform, message.message_id, message.text) == (driver.name, msg_id, "hello")

    async def test_a_message_the_bus_refused_is_left_for_the_platform_to_redeliver(
        self, driver: PlatformDriver
    ) -> None:
        tries: list[str] = []

        async def flaky_bus(message: InboundMessage) -> None:
            tries.append(message.message_id)
            if len(tries) == 1:
                raise ConnectionError("nats unreachable")

        _, health = await driver.start(flaky_bus)
        msg_id = await driver.user_sends("keep me")
        await until(held(lambda: bool(tries)))
        await asyncio.sleep(ACK_WINDOW_S)
        assert await driver.acked(msg_id) == 0
        await driver.redeliver(msg_id)
        await acked_once(driver, msg_id)
        assert tries == [msg_id, msg_id]
        assert health.publish_failures == 1 and "nats unreachable" in (health.last_error or "")

    async def test_an_unreadable_message_is_acked_never_published_and_answered_once(
        self, driver: PlatformDriver
    ) -> None:
        published: list[InboundMessage] = []

        async def bus(message: InboundMessage) -> None:
            published.append(message)

        _, health = await driver.start(bus)
        msg_id = await driver.user_sends_unreadable(sender="sam")
        await acked_once(driver, msg_id)

        async def told() -> bool:
            return bool(await driver.answers_to("sam"))

        await until(told)
        await asyncio.sleep(1.0)  # nothing more comes: no second answer, no redelivery
        assert published == []
        assert len(await driver.answers_to("sam")) == 1
        assert await driver.deliveries(msg_id) == 1 and await driver.acked(msg_id) == 1
        assert health.messages_malformed == 1

    # -- the connection -------------------------------------------------------------------

    async def test_a_dropped_socket_is_reconnected(self, driver: PlatformDriver) -> None:
        received: list[str] = []

        async def bus(message: InboundMessage) -> None:
            received.append(message.text)

        _, health = await driver.start(bus)
        await driver.drop_connection()

        async def back() -> bool:
            return await driver.open_connections() == 1 and health.reconnects >= 1

        await until(back)
        assert health.state == ChannelState.CONNECTED
        await acked_once(driver, await driver.user_sends("after the drop"))
        assert received == ["after the drop"]

    async def test_stop_takes_under_a_second(self, driver: PlatformDriver) -> None:
        adapter, health = await driver.start()
        started = time.monotonic()
        await adapter.stop()
        assert time.monotonic() - started < 1.0
        assert health.state == ChannelState.DISCONNECTED

        async def closed() -> bool:
            return await driver.open_connections() == 0

        await until(closed, within=5)

    # -- cards ----------------------------------------------------------------------------

    async def test_a_card_that_exists_is_not_created_twice(self, driver: PlatformDriver) -> None:
        adapter, target = await connected_with_a_message(driver)
        await adapter.surface.open_card("run-1", target)
        with pytest.raises(CardExists):
            await adapter.surface.open_card("run-1", target)
        assert await driver.cards_created() == 1

    async def test_optional_card_calls_yield_to_the_calls_that_must_happen(
        self, driver: PlatformDriver
    ) -> None:
        # Two card calls a second: every call waits for its slot, and priority decides.
        adapter, target = await connected_with_a_message(driver, card_qps=2)
        surface = adapter.surface
        await asyncio.gather(surface.open_card("a", target), surface.open_card("b", target))
        finished: list[str] = []

        async def noted(name: str, call: Awaitable[Any]) -> None:
            await call
            finished.append(name)

        update = asyncio.create_task(noted("update a", surface.update_card("a", "half of a")))
        await asyncio.sleep(0.05)  # the update waits for its slot first
        final = asyncio.create_task(noted("final b", surface.close_card("b", "all of b", failed=False)))
        await asyncio.wait_for(asyncio.gather(update, final), 20)
        assert finished == ["final b", "update a"]
        assert await driver.card("b") == Answer(card=True, text="all of b", final=True)

    # -- the whole connector: answered once, and always ------------------------------------

    @pytest.fixture
    def answering(
        self,
        driver: PlatformDriver,
        private_nats: str,
        database_url: str,
        key_prefix: str,
        secret_keys: str,
        bus: tuple[NATS, JetStreamContext],
        db: async_sessionmaker[AsyncSession],
        box: SecretBox,
    ) -> Answering:
        """A connector in this process holding a channel on the driver's app, connected, with an
        instant agent answering every message it stores (the agent is yielded)."""

        @contextlib.asynccontextmanager
        async def running() -> AsyncIterator[InstantAgent]:
            world = {"nats_url": private_nats, "database_url": database_url, "prefix": key_prefix}
            [channel] = new_channel_ids(1)
            agent = InstantAgent(bus[1], {channel})
            await agent.start()
            try:
                async with connector(**world, secret_keys=secret_keys):
                    await driver.add_channel(db, box, channel)
                    await until(lambda: connections_at_least(driver, 1))
                    yield agent
            finally:
                await agent.stop()

        return running

    async def test_a_redelivered_message_is_answered_once(
        self, driver: PlatformDriver, answering: Answering
    ) -> None:
        async with answering() as agent:
            sent = []
            for i in range(3):
                msg_id = await driver.user_sends(f"question {i}", sender=f"user{i}")
                await driver.redeliver(msg_id)  # at once, maybe before our ACK
                sent.append(msg_id)
            await each_answered(driver, sent)
            for msg_id in sent:  # and again after it was answered
                await driver.redeliver(msg_id)
            await asyncio.sleep(1.5)
            shown = [await driver.answers(m) for m in sent]
        for i, answers in enumerate(shown):
            assert [a.text for a in answers] == [echo(f"question {i}")]
        assert sorted(agent.received) == sorted(sent), "the bus let each message through once"

    async def test_a_final_lands_as_a_plain_message_while_cards_are_down(
        self, driver: PlatformDriver, answering: Answering
    ) -> None:
        async with answering():
            await driver.set_cards_down(True)
            sent = [await driver.user_sends(f"card-less {i}", sender=f"w{i}") for i in range(4)]
            await each_answered(driver, sent)
            await driver.set_cards_down(False)
            await asyncio.sleep(1.0)
            shown = [await driver.answers(m) for m in sent]
        for i, answers in enumerate(shown):
            assert answers == [Answer(card=False, text=echo(f"card-less {i}"), final=True)]


async def connections_at_least(driver: PlatformDriver, count: int) -> bool:
    return await driver.open_connections() >= count


async def connected_with_a_message(
    driver: PlatformDriver, **settings: Any
) -> tuple[PlatformAdapter, ReplyTarget]:
    """A connected adapter, and where to answer a message a user just sent it."""
    got: list[InboundMessage] = []

    async def bus(message: InboundMessage) -> None:
        got.append(message)

    adapter, _ = await driver.start(bus, card_rate_limit_patience_s=20, **settings)
    await driver.user_sends("hi")
    await until(held(lambda: bool(got)))
    return adapter, got[0].target
