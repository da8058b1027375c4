"""A dead-lettered run replayed through the admin API once its cause is fixed, against a private
nats-server, real Redis, a migrated database and a scripted model: the replay is a run of its
own (a new run id, so a new card), admitted to its conversation's queue, and answers the stored
user message; the old run's failure stays as it was."""

import asyncio
import base64
from collections.abc import Callable
from pathlib import Path

from nats.js import JetStreamContext
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_admin.dead_letters import service as dead_letters
from imgate_admin.settings import AdminSettings
from imgate_common.bus import DEAD_LETTERS_STREAM, RUNS_STREAM, dead_letter_subject, run_subject
from imgate_common.consumers import RUNNER_CONSUMER
from imgate_common.conversation_queue import ConversationQueue
from imgate_common.db.models import Agent, Message
from imgate_common.errors import Conflict
from imgate_common.messages import MAX_REPLAYS, DeadLetter, RunCompleted, RunRequest, run_id_for
from imgate_common.publish import jetstream_publisher
from imgate_common.status import ChannelStatusStore
from imgate_runner.main import RunConsumer
from imgate_runner.service import RunExecutor
from imgate_runner.settings import RunnerSettings
from tests.runner.conftest import Events, openai_agent, setup_run
from tests.runner.test_dead_letters import eventually, stream_messages
from tests.support.factories import reply_target
from tests.support.openai_stub import ScriptedModel

# What an agent's stored key looks like after the secret keys were replaced without re-encrypting.
FOREIGN_TOKEN = "gAAAAABoNotATokenTheseKeysCanRead=="


async def poisoned_run(
    sessions: async_sessionmaker[AsyncSession], url: str, text: str, conversation: str | None = None
) -> RunRequest:
    """A run of an agent whose API key cannot be decrypted, under its message's run id."""
    request = await setup_run(sessions, openai_agent(url, api_key_enc=FOREIGN_TOKEN), text, conversation)
    message_id = f"msg-{request.run_id[:8]}"
    target = reply_target(channel_id=request.channel_id, inbound_message_id=message_id)
    run_id = run_id_for("dingtalk", request.channel_id, message_id)
    return request.model_copy(update={"run_id": run_id, "target": target})


async def letters(js: JetStreamContext) -> list[int]:
    info = (await js.stream_info(DEAD_LETTERS_STREAM)).state
    return list(range(info.first_seq, info.last_seq + 1)) if info.messages else []


async def test_a_replayed_run_answers_on_a_new_run_once_its_cause_is_fixed(
    js: JetStreamContext,
    redis_client: Redis,
    key_prefix: str,
    sessions: async_sessionmaker[AsyncSession],
    scripted: tuple[ScriptedModel, str],
    make_executor: Callable[[Events], RunExecutor],
    tmp_path: Path,
) -> None:
    model, url = scripted
    queue = ConversationQueue(redis_client, key_prefix, active_ttl_s=60)
    events = Events()
    executor = make_executor(events)
    poison = await poisoned_run(sessions, url, "what is the weather?")
    assert (await queue.admit(poison, 5)).admission == "start"
    await js.publish(run_subject(poison.channel_id), poison.model_dump_json().encode(), stream=RUNS_STREAM)
    stop = asyncio.Event()
    settings = RunnerSettings(ack_wait_s=30, redis_prefix=key_prefix, data_dir=tmp_path)
    status = ChannelStatusStore(redis_client, key_prefix)
    running = asyncio.create_task(RunConsumer(js, executor, settings, queue, status).run(stop))
    try:

        async def dead_lettered() -> bool:
            return len(await letters(js)) == 1

        await eventually(dead_lettered)
        [seq] = await letters(js)
        # The cause, fixed: the agent's key entered again.
        async with sessions() as session:
            agent = await session.get(Agent, poison.agent_id)
            assert agent is not None
            agent.api_key_enc = executor._box.encrypt("sk-entered-again")
            session.add(agent)
            await session.commit()
        executor.agents.clear()  # as admin-api's change notice does
        admin = AdminSettings(redis_prefix=key_prefix, data_dir=tmp_path)
        async with sessions() as session:
            _, outcome = await dead_letters.replay(js, redis_client, admin, session, "ops", seq)
        replayed = run_id_for("dingtalk", poison.channel_id, poison.target.inbound_message_id, 1)
        assert (outcome.run_id, outcome.replay, outcome.admission) == (replayed, 1, "start")

        async def answered() -> bool:
            return any(isinstance(e, RunCompleted) for e in events)

        await eventually(answered)
    finally:
        stop.set()
        await running
    assert [(e.kind, e.run_id) for e in events if not e.kind == "delta"] == [
        ("failed", poison.run_id),
        ("started", replayed),
        ("completed", replayed),
    ]
    assert events[-1].text == model.answers[0] and len(model.requests) == 1
    assert [m["content"] for m in model.requests[0]["messages"]] == ["what is the weather?"]
    async with sessions() as session:
        answers = (await session.exec(select(Message).where(Message.role == "assistant"))).all()
    assert [(a.run_id, a.content) for a in answers] == [(replayed, model.answers[0])]
    assert await letters(js) == [], "the letter is removed, and the replay was not dead-lettered"
    assert await queue.active(poison.conversation_id) is None, "the conversation is free"


async def test_a_replayed_run_waits_behind_the_conversations_running_one(
    js: JetStreamContext, redis_client: Redis, key_prefix: str, sessions: async_sessionmaker[AsyncSession],
    tmp_path: Path,
) -> None:  # fmt: skip
    """No runner here: the replay joins the queue (a queued event on its new card), and the
    run that holds the conversation publishes it when it hands over."""
    queue = ConversationQueue(redis_client, key_prefix, active_ttl_s=60)
    dead = await poisoned_run(sessions, "http://127.0.0.1:9/v1", "first")
    running = await poisoned_run(sessions, "http://127.0.0.1:9/v1", "second", dead.conversation_id)
    assert (await queue.admit(running, 5)).admission == "start"
    letter = await file_run_letter(js, dead)
    admin = AdminSettings(redis_prefix=key_prefix, data_dir=tmp_path)
    async with sessions() as session:
        _, outcome = await dead_letters.replay(js, redis_client, admin, session, "ops", letter)
    assert (outcome.admission, outcome.replay) == ("queued", 1)
    assert [RunRequest.model_validate_json(r).run_id for r in await stream_messages(js, RUNS_STREAM)] == []
    published: list[RunRequest] = []

    async def publish(request: RunRequest) -> None:
        published.append(request)

    await queue.hand_over(running.run_id, running.conversation_id, publish)
    assert [(r.run_id, r.replay) for r in published] == [(outcome.run_id, 1)]


async def test_a_run_is_replayed_a_bounded_number_of_times(
    js: JetStreamContext, redis_client: Redis, key_prefix: str, sessions: async_sessionmaker[AsyncSession],
    tmp_path: Path,
) -> None:  # fmt: skip
    dead = await poisoned_run(sessions, "http://127.0.0.1:9/v1", "again and again")
    worn = dead.model_copy(update={"replay": MAX_REPLAYS})
    letter = await file_run_letter(js, worn)
    admin = AdminSettings(redis_prefix=key_prefix, data_dir=tmp_path)
    async with sessions() as session:
        try:
            await dead_letters.replay(js, redis_client, admin, session, "ops", letter)
        except Conflict as exc:
            assert f"at most {MAX_REPLAYS}" in str(exc)
        else:
            raise AssertionError("replayed beyond the bound")
    assert await letters(js) == [letter], "the letter is kept"


async def file_run_letter(js: JetStreamContext, request: RunRequest) -> int:
    """File `request` as the runner would have after giving up on it; returns its sequence."""
    letter = DeadLetter(
        consumer=RUNNER_CONSUMER,
        stream=RUNS_STREAM,
        subject=run_subject(request.channel_id),
        data_b64=base64.b64encode(request.model_dump_json().encode()).decode(),
        reason="agent 1: its API key cannot be decrypted",
        category="misconfigured",
        permanent=True,
        channel_id=request.channel_id,
        run_id=request.run_id,
    )
    await jetstream_publisher(js)(
        dead_letter_subject(RUNNER_CONSUMER), DEAD_LETTERS_STREAM, letter, f"dead:{request.run_id}"
    )
    return (await js.stream_info(DEAD_LETTERS_STREAM)).state.last_seq


async def test_a_run_given_up_on_and_published_again_under_its_run_id_is_not_run_again(
    js: JetStreamContext,
    redis_client: Redis,
    key_prefix: str,
    sessions: async_sessionmaker[AsyncSession],
    scripted: tuple[ScriptedModel, str],
    make_executor: Callable[[Events], RunExecutor],
    tmp_path: Path,
) -> None:
    """What a replay did before it had an identity of its own: the conversation had moved on,
    so the run would have been answered outside its turn, on a card the user saw fail."""
    model, url = scripted
    queue = ConversationQueue(redis_client, key_prefix, active_ttl_s=60)
    events = Events()
    executor = make_executor(events)
    poison = await poisoned_run(sessions, url, "hello?")
    await queue.admit(poison, 5)
    body = poison.model_dump_json().encode()
    await js.publish(run_subject(poison.channel_id), body, stream=RUNS_STREAM)
    stop = asyncio.Event()
    settings = RunnerSettings(ack_wait_s=30, redis_prefix=key_prefix, data_dir=tmp_path)
    status = ChannelStatusStore(redis_client, key_prefix)
    running = asyncio.create_task(RunConsumer(js, executor, settings, queue, status).run(stop))
    try:

        async def dead_lettered() -> bool:
            return len(await letters(js)) == 1

        await eventually(dead_lettered)
        async with sessions() as session:
            agent = await session.get(Agent, poison.agent_id)
            assert agent is not None
            agent.api_key_enc = executor._box.encrypt("sk-entered-again")
            session.add(agent)
            await session.commit()
        headers = {"Nats-Msg-Id": "replay:the-old-way"}
        await js.publish(run_subject(poison.channel_id), body, stream=RUNS_STREAM, headers=headers)

        async def taken() -> bool:
            return (await js.stream_info(RUNS_STREAM)).state.messages == 0

        await eventually(taken)
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await running
    assert [(e.kind, e.run_id) for e in events] == [("failed", poison.run_id)]
    assert model.requests == [] and len(await letters(js)) == 1
