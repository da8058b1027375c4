"""A whole connector replica in this process: control requests, reconciliation with the database,
status for admin-api, and a message through to its streamed card."""

import time
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.bus import control_subject
from imgate_common.messages import ChannelState, ControlAction, ControlReply, ControlRequest
from imgate_common.secrets import SecretBox
from imgate_common.status import ChannelStatusStore
from tests.connector.sim import Sim, final, until
from tests.connector.stack import InstantAgent, add_channel, connector, new_channel_ids, set_enabled


@pytest.fixture
def world(
    imsim: str,
    private_nats: str,
    database_url: str,
    secret_keys: str,
    key_prefix: str,
) -> dict[str, Any]:
    return {
        "nats_url": private_nats,
        "database_url": database_url,
        "prefix": key_prefix,
        "secret_keys": secret_keys,
        "imsim": imsim,
    }


async def control(nc: NATS, channel_id: int, action: ControlAction) -> ControlReply:
    request = ControlRequest(channel_id=channel_id, action=action)
    msg = await nc.request(control_subject(channel_id), request.model_dump_json().encode(), timeout=3)
    return ControlReply.model_validate_json(msg.data)


async def test_control_start_stop_restart_reload_answer_with_the_state(
    world: dict[str, Any],
    bus: tuple[NATS, JetStreamContext],
    db: async_sessionmaker[AsyncSession],
    box: SecretBox,
    sim: Sim,
    redis_client: Redis,
) -> None:
    nc, _ = bus
    [channel] = new_channel_ids(1)
    async with connector(**world, reconcile_interval_s=30):
        await add_channel(db, box, channel, sim.app, sim.secret, enabled=False)
        reply = await control(nc, channel, ControlAction.START)
        assert reply.state == ChannelState.DISABLED, "the database says disabled"

        await set_enabled(db, channel, True)
        started = time.monotonic()
        reply = await control(nc, channel, ControlAction.START)
        assert reply.ok and reply.state == ChannelState.CONNECTED and reply.owner
        assert time.monotonic() - started < 2
        [first] = await sim.open_connections()

        reply = await control(nc, channel, ControlAction.RESTART)
        assert reply.ok and reply.state == ChannelState.CONNECTED
        [second] = await sim.open_connections()
        assert second["connection_id"] != first["connection_id"]

        reply = await control(nc, channel, ControlAction.RELOAD)
        assert reply.ok
        assert [c["connection_id"] for c in await sim.open_connections()] == [second["connection_id"]], (
            "nothing changed: no reconnect"
        )

        await set_enabled(db, channel, False)
        reply = await control(nc, channel, ControlAction.STOP)
        assert reply.state == ChannelState.DISABLED
        assert await sim.open_connections() == []
        assert await ChannelStatusStore(redis_client, world["prefix"]).get(channel) is None


async def test_a_missed_control_message_is_caught_up_from_the_database(
    world: dict[str, Any],
    db: async_sessionmaker[AsyncSession],
    box: SecretBox,
    sim: Sim,
) -> None:
    [channel] = new_channel_ids(1)
    async with connector(**world, reconcile_interval_s=0.5):
        await add_channel(db, box, channel, sim.app, sim.secret)

        async def connected() -> bool:
            return len(await sim.open_connections()) == 1

        await until(connected, within=5)
        await set_enabled(db, channel, False)  # and no control message

        async def closed() -> bool:
            return await sim.open_connections() == []

        await until(closed, within=5)


async def test_status_tells_admin_api_what_is_going_on(
    world: dict[str, Any],
    bus: tuple[NATS, JetStreamContext],
    db: async_sessionmaker[AsyncSession],
    box: SecretBox,
    sim: Sim,
    redis_client: Redis,
) -> None:
    _, js = bus
    [channel] = new_channel_ids(1)
    agent = InstantAgent(js, {channel})
    await agent.start()
    store = ChannelStatusStore(redis_client, world["prefix"])
    try:
        async with connector(**world):
            await add_channel(db, box, channel, sim.app, sim.secret)
            sent = await sim.send("status please")

            async def answered() -> bool:
                answers = await sim.answers(sent["msg_id"])
                return bool(answers) and final(answers[0])

            await until(answered)

            async def counted() -> bool:
                status = await store.get(channel)
                return status is not None and status.replies_out == 1

            await until(counted, within=5)
            status = await store.get(channel)
            assert status is not None
            assert status.state == ChannelState.CONNECTED and status.owner and status.owner.startswith("in-")
            assert status.connected_at is not None and status.uptime_seconds() is not None
            assert status.messages_in == 1 and status.last_inbound_at is not None
            assert status.reconnects == 0 and status.rate_limit_hits == 0

            await sim.faults(open_failure="server_error")
            await sim.post("connections/drop")

            async def shows_the_failure() -> bool:
                status = await store.get(channel)
                return status is not None and "503" in (status.last_error or "")

            await until(shows_the_failure, within=5)
            status = await store.get(channel)
            assert status is not None and status.state == ChannelState.DISCONNECTED
            assert status.last_error_at is not None and status.reconnects >= 1
            await sim.faults(open_failure="none")
    finally:
        await agent.stop()


async def test_a_message_becomes_a_card_that_opens_before_the_first_token(
    world: dict[str, Any],
    bus: tuple[NATS, JetStreamContext],
    db: async_sessionmaker[AsyncSession],
    box: SecretBox,
    sim: Sim,
    http: httpx.AsyncClient,
) -> None:
    _, js = bus
    [channel] = new_channel_ids(1)
    agent = InstantAgent(js, {channel}, first_delay_s=1.0, chunks=5, delay_s=0.15)
    await agent.start()
    try:
        async with connector(**world):
            await add_channel(db, box, channel, sim.app, sim.secret)

            async def connected() -> bool:
                return len(await sim.open_connections()) == 1

            await until(connected, within=5)
            sent = await sim.send("Tell me a story")

            async def card_shown() -> bool:
                return bool(await sim.answers(sent["msg_id"]))

            waited = await until(card_shown)
            assert waited < 0.8, "the thinking card must not wait for the model's first token"

            async def answered() -> bool:
                answers = await sim.answers(sent["msg_id"])
                return bool(answers) and final(answers[0])

            await until(answered)
            [card] = await sim.answers(sent["msg_id"])
            assert card["kind"] == "card" and card["content"] == "Echo: Tell me a story"
            lengths = [u["len"] for u in card["updates"] if u["op"] == "full"]
            assert len(lengths) >= 3 and lengths == sorted(lengths), card["updates"]
            assert len([u for u in card["updates"] if u["finalize"]]) == 1
    finally:
        await agent.stop()


async def test_a_channels_own_card_qps_sets_its_apps_budget(
    world: dict[str, Any],
    bus: tuple[NATS, JetStreamContext],
    db: async_sessionmaker[AsyncSession],
    box: SecretBox,
    sim: Sim,
    redis_client: Redis,
) -> None:
    _, js = bus
    [channel] = new_channel_ids(1)
    agent = InstantAgent(js, {channel})
    await agent.start()
    try:
        async with connector(**world):
            await add_channel(db, box, channel, sim.app, sim.secret, card_qps=7)
            sent = await sim.send("how fast?")

            async def answered() -> bool:
                answers = await sim.answers(sent["msg_id"])
                return bool(answers) and final(answers[0])

            await until(answered)
    finally:
        await agent.stop()
    bucket = await redis_client.hgetall(f"{world['prefix']}:card-budget:{sim.app}")
    assert float(bucket[b"rate"]) == 7.0
