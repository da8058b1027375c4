"""A replayed message is a new attempt with its own run id: routed again although its message
was seen and its first run finished, through the conversation's queue, once per replay."""

from pathlib import Path
from typing import Any

import httpx
from nats.js import JetStreamContext
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_admin.dead_letters import service as dead_letters
from imgate_admin.settings import AdminSettings
from imgate_common.bus import (
    DEAD_LETTERS_STREAM,
    INBOUND_STREAM,
    REPLIES_STREAM,
    RUNS_STREAM,
    inbound_subject,
)
from imgate_common.db.models import AuditEntry, Message
from imgate_common.messages import REPLY_EVENT, InboundMessage, RunRequest, run_id_for
from imgate_router.service import InboundRouter
from tests.router.conftest import Published, bus_router, inbound, make_channel
from tests.router.test_dead_letters import eventually, messages
from tests.router.test_identity_mappers import ldap_mapping, set_mapping


def replayed(message: InboundMessage, replay: int) -> InboundMessage:
    """The message as the admin API sends it back: the same body, the next replay number."""
    return InboundMessage.model_validate({**message.model_dump(mode="json"), "replay": replay})


async def test_a_replay_of_a_message_whose_run_finished_is_a_new_run_in_the_same_conversation(
    router: InboundRouter,
    published: Published,
    channel_id: int,
    sessions: async_sessionmaker[AsyncSession],
    finish: Any,
) -> None:
    # The run failed in the runner (dead-lettered): its message was seen, its run is finished.
    message = inbound(channel_id, "m1", "hello")
    await router.handle(message)
    [first] = published.of(RunRequest)
    await finish(first)
    await router.handle(message)  # a platform redelivery is still dropped
    assert len(published.of(RunRequest)) == 1

    await router.handle(replayed(message, 1))
    [_, again] = published.of(RunRequest)
    assert again.run_id == run_id_for("dingtalk", channel_id, "m1", 1) != first.run_id
    assert again.replay == 1 and first.replay == 0
    assert again.conversation_id == first.conversation_id and again.text == "hello"
    # The replay is seen once: its own redelivery is dropped; the next replay is new again.
    await router.handle(replayed(message, 1))
    assert len(published.of(RunRequest)) == 2
    await finish(again)
    await router.handle(replayed(message, 2))
    assert [r.replay for r in published.of(RunRequest)] == [0, 1, 2]
    # None of them was answered: the one stored turn is each replay's in turn (the history
    # holds the message once).
    async with sessions() as session:
        [turn] = (await session.exec(select(Message))).all()
    assert turn.run_id == published.of(RunRequest)[2].run_id
    assert {r.user_message_id for r in published.of(RunRequest)} == {turn.id}


async def test_a_replay_of_an_answered_message_is_a_turn_of_its_own(
    router: InboundRouter,
    published: Published,
    channel_id: int,
    sessions: async_sessionmaker[AsyncSession],
    finish: Any,
) -> None:
    message = inbound(channel_id, "m1", "hello")
    await router.handle(message)
    [first] = published.of(RunRequest)
    async with sessions() as session:
        answer = Message(
            conversation_id=first.conversation_id, role="assistant", content="hi", run_id=first.run_id
        )
        session.add(answer)
        await session.commit()
    await finish(first)
    await router.handle(replayed(message, 1))
    async with sessions() as session:
        turns = (await session.exec(select(Message).order_by(col(Message.id)))).all()
    again = published.of(RunRequest)[1]
    assert [(m.role, m.run_id) for m in turns] == [
        ("user", first.run_id),
        ("assistant", first.run_id),
        ("user", again.run_id),
    ]


async def test_a_replay_waits_its_turn_behind_the_running_answer(
    router: InboundRouter, published: Published, channel_id: int, finish: Any
) -> None:
    message = inbound(channel_id, "m1", "one")
    await router.handle(message)
    await finish(published.of(RunRequest)[0])
    await router.handle(inbound(channel_id, "m2", "two"))  # running now
    await router.handle(replayed(message, 1))
    runs = published.of(RunRequest)
    assert [r.text for r in runs] == ["one", "two"], "the replay waits"
    await finish(runs[1])
    assert [r.text for r in published.of(RunRequest)] == ["one", "two", "one"]
    assert published.of(RunRequest)[2].replay == 1


async def test_a_dead_lettered_message_replayed_by_the_admin_api_once_fixed_runs_anew(
    js: JetStreamContext,
    private_nats: str,
    sessions: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    key_prefix: str,
    tmp_path: Path,
    http_client: httpx.AsyncClient,
) -> None:
    channel = await make_channel(sessions, language="en-US")
    broker, router = bus_router(private_nats, sessions, redis_client, key_prefix, tmp_path, http_client)
    broken = ldap_mapping("ldap://127.0.0.1:9", user_filter="(uid={uid})")
    await set_mapping(sessions, channel, router, broken)
    message = inbound(channel, "poison-1", "hello")
    async with broker:
        await broker.start()
        subject = inbound_subject(message.platform, message.channel_id, message.target.conversation_id)
        await js.publish(subject, message.model_dump_json().encode(), stream=INBOUND_STREAM)

        async def dead_lettered() -> bool:
            return len(await messages(js, DEAD_LETTERS_STREAM)) == 1

        await eventually(dead_lettered)
        await set_mapping(sessions, channel, router, {"mode": "auto"})  # the cause, fixed
        seq = (await js.stream_info(DEAD_LETTERS_STREAM)).state.last_seq
        admin = AdminSettings(redis_prefix=key_prefix, data_dir=tmp_path)
        async with sessions() as session:
            _, outcome = await dead_letters.replay(js, redis_client, admin, session, "ops", seq)
        new_run = run_id_for("dingtalk", channel, "poison-1", 1)
        assert (outcome.replay, outcome.run_id) == (1, new_run)

        async def run_requested() -> bool:
            return len(await messages(js, RUNS_STREAM)) == 1

        await eventually(run_requested)
    [raw] = await messages(js, RUNS_STREAM)
    request = RunRequest.model_validate_json(raw)
    assert (request.run_id, request.replay, request.text) == (new_run, 1, "hello")
    events = [REPLY_EVENT.validate_json(raw) for raw in await messages(js, REPLIES_STREAM)]
    old_run = run_id_for("dingtalk", channel, "poison-1")
    assert [(e.kind, e.run_id) for e in events] == [("failed", old_run)], "the old card as it was"
    assert await messages(js, DEAD_LETTERS_STREAM) == [], "the letter is removed"
    [sent] = [r for r in await messages(js, INBOUND_STREAM) if b'"replay":1' in r.replace(b" ", b"")]
    assert InboundMessage.model_validate_json(sent).raw == message.raw, "the body kept whole"
    async with sessions() as session:
        [audit] = (
            await session.exec(select(AuditEntry).where(AuditEntry.action == "dead_letter.replay"))
        ).all()
    assert audit.detail["replay"] == 1 and audit.detail["replay_run_id"] == new_run
