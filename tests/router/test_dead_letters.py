"""The router's partitions as they run (FastStream, a private nats-server): a message whose
channel is misconfigured is dead-lettered at once, its card ends with the failure sentence,
and the partition goes on with the next message."""

import asyncio
import base64
from pathlib import Path
from typing import Any

import httpx
from nats.js import JetStreamContext
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.bus import (
    DEAD_LETTERS_STREAM,
    INBOUND_STREAM,
    REPLIES_STREAM,
    RUNS_STREAM,
    inbound_subject,
)
from imgate_common.messages import REPLY_EVENT, DeadLetter, InboundMessage, RunFailed
from imgate_common.status import ChannelStatusStore
from imgate_common.wording import say
from imgate_router.service import run_id_for
from tests.router.conftest import bus_router, inbound, make_channel
from tests.router.test_identity_mappers import ldap_mapping, set_mapping


async def messages(js: JetStreamContext, stream: str) -> list[bytes]:
    info = await js.stream_info(stream)
    if info.state.messages == 0:
        return []
    return [
        (await js.get_msg(stream, seq)).data or b""
        for seq in range(info.state.first_seq, info.state.last_seq + 1)
    ]


async def eventually(check: Any) -> None:
    async with asyncio.timeout(15):
        while not await check():  # noqa: ASYNC110 (polls JetStream)
            await asyncio.sleep(0.05)


async def test_a_misconfigured_channels_message_is_dead_lettered_and_the_partition_goes_on(
    js: JetStreamContext,
    private_nats: str,
    sessions: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    key_prefix: str,
    tmp_path: Path,
    http_client: httpx.AsyncClient,
) -> None:
    broken = await make_channel(sessions, language="en-US")
    broker, router = bus_router(private_nats, sessions, redis_client, key_prefix, tmp_path, http_client)
    await set_mapping(sessions, broken, router, ldap_mapping("ldap://127.0.0.1:9", user_filter="(uid={uid})"))
    poison = inbound(broken, "poison-1", "hello")
    async with broker:
        await broker.start()
        for message in (poison, inbound(broken, "poison-2", "again")):
            subject = inbound_subject(message.platform, message.channel_id, message.target.conversation_id)
            await js.publish(subject, message.model_dump_json().encode(), stream=INBOUND_STREAM)

        async def both_dead_lettered() -> bool:
            return len(await messages(js, DEAD_LETTERS_STREAM)) == 2

        await eventually(both_dead_lettered)
    letters = [DeadLetter.model_validate_json(raw) for raw in await messages(js, DEAD_LETTERS_STREAM)]
    first = letters[0]
    assert first.stream == INBOUND_STREAM and first.consumer.startswith("router-p")
    assert first.permanent and first.category == "misconfigured" and first.deliveries == 1
    assert first.run_id == run_id_for(poison) and first.channel_id == broken
    assert InboundMessage.model_validate_json(base64.b64decode(first.data_b64)).message_id == "poison-1"
    assert "(uid={uid})" in first.reason
    events = [REPLY_EVENT.validate_json(raw) for raw in await messages(js, REPLIES_STREAM)]
    assert [e.run_id for e in events if isinstance(e, RunFailed)] == [run_id_for(poison), letters[1].run_id]
    assert events[0].text == say("failure.misconfigured", "en-US")  # type: ignore[union-attr]
    assert await messages(js, RUNS_STREAM) == []
    status = await ChannelStatusStore(redis_client, key_prefix).read(broken, enabled=True)
    assert status.last_error is not None and status.last_error.startswith("router: configuration: LDAP")
