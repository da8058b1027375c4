"""RunExecutor against a real OpenAI-compatible HTTP server (scripted) and a migrated database."""

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.db.models import Agent, Channel, Conversation, Message, User
from imgate_common.errors import USER_MESSAGES, FailureCategory
from imgate_common.messages import (
    RunCompleted,
    RunDelta,
    RunFailed,
    RunRequest,
    RunStarted,
)
from imgate_common.secrets import SecretBox
from imgate_runner.providers.registry import build_providers
from imgate_runner.service import RunExecutor
from imgate_runner.settings import RunnerSettings
from tests.support.factories import reply_target
from tests.support.openai_stub import ScriptedModel, free_port, serve_scripted_model


class Events(list[Any]):
    async def __call__(self, subject: str, stream: str, model: BaseModel, msg_id: str) -> None:
        self.append(model)


@pytest.fixture
def scripted() -> Iterator[tuple[ScriptedModel, str]]:
    model = ScriptedModel()
    with serve_scripted_model(model) as url:
        yield model, url


async def noop() -> None:
    return None


async def setup_run(
    sessions: async_sessionmaker[AsyncSession],
    agent: Agent | None,
    text: str,
    conversation: str | None = None,
) -> RunRequest:
    async with sessions() as session:
        if agent is not None:
            session.add(agent)
            await session.flush()
        channel = Channel(name=f"c-{uuid.uuid4().hex[:6]}", platform="dingtalk")
        user = User(username=f"u-{uuid.uuid4().hex[:6]}", auth_source="dingtalk")
        session.add_all([channel, user])
        await session.flush()
        conversation = conversation or str(uuid.uuid4())
        if await session.get(Conversation, conversation) is None:
            session.add(Conversation(id=conversation, channel_id=channel.id, scope_key="k", user_id=user.id))
            await session.flush()
        run_id = str(uuid.uuid4())
        message = Message(conversation_id=conversation, role="user", content=text, run_id=run_id)
        session.add(message)
        await session.commit()
        return RunRequest(
            run_id=run_id,
            channel_id=channel.id,  # type: ignore[arg-type]
            conversation_id=conversation,
            agent_id=agent.id if agent else None,
            user_id=user.id,  # type: ignore[arg-type]
            user_message_id=message.id,  # type: ignore[arg-type]
            text=text,
            target=reply_target(),
        )


@pytest.fixture
async def make_executor(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Any
) -> AsyncIterator[Callable[[Events], RunExecutor]]:
    settings = RunnerSettings(data_dir=tmp_path, delta_interval_s=0.0, delta_max_chars=8)
    providers = build_providers(settings)

    def make(events: Events) -> RunExecutor:
        return RunExecutor(settings, sessions, SecretBox.from_settings(settings), providers, events)

    yield make
    for provider in providers.values():
        await provider.shutdown()


def openai_agent(url: str, **kw: Any) -> Agent:
    return Agent(name=f"a-{uuid.uuid4().hex[:6]}", provider="openai", model="scripted", base_url=url, **kw)


async def test_streams_deltas_then_the_whole_answer_and_stores_it(
    sessions: async_sessionmaker[AsyncSession],
    scripted: tuple[ScriptedModel, str],
    make_executor: Callable[[Events], RunExecutor],
) -> None:
    model, url = scripted
    events = Events()
    request = await setup_run(sessions, openai_agent(url, system_prompt="Be brief."), "hi there")
    await make_executor(events).execute(request, noop)
    assert isinstance(events[0], RunStarted)
    deltas = [e for e in events if isinstance(e, RunDelta)]
    final = events[-1]
    assert isinstance(final, RunCompleted)
    assert final.text == model.answers[0]
    assert len(deltas) >= 2, "the answer must stream in several deltas"
    assert "".join(d.text for d in deltas) == final.text
    assert [d.length for d in deltas] == sorted(d.length for d in deltas)
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert model.requests[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    async with sessions() as session:
        stored = (await session.exec(select(Message).where(Message.role == "assistant"))).one()
    assert stored.content == final.text and stored.run_id == request.run_id
    assert stored.completion_tokens == len(final.text.split(" ")) and stored.finish_reason == "stop"


async def test_second_turn_sends_the_first_turn_as_history(
    sessions: async_sessionmaker[AsyncSession],
    scripted: tuple[ScriptedModel, str],
    make_executor: Callable[[Events], RunExecutor],
) -> None:
    model, url = scripted
    agent = openai_agent(url)
    first = await setup_run(sessions, agent, "first question")
    run = make_executor(Events())
    await run.execute(first, noop)
    async with sessions() as session:
        second_msg = Message(
            conversation_id=first.conversation_id, role="user", content="second", run_id="r2"
        )
        session.add(second_msg)
        await session.commit()
    second = first.model_copy(update={"run_id": "r2", "user_message_id": second_msg.id, "text": "second"})
    await run.execute(second, noop)
    sent = [(m["role"], m["content"]) for m in model.requests[1]["messages"]]
    assert sent == [("user", "first question"), ("assistant", model.answers[0]), ("user", "second")]


async def test_a_redelivered_finished_run_repeats_the_answer_without_calling_the_model(
    sessions: async_sessionmaker[AsyncSession],
    scripted: tuple[ScriptedModel, str],
    make_executor: Callable[[Events], RunExecutor],
) -> None:
    model, url = scripted
    request = await setup_run(sessions, openai_agent(url), "once")
    run = make_executor(Events())
    await run.execute(request, noop)
    again = Events()
    await make_executor(again).execute(request, noop)
    assert len(model.requests) == 1
    assert [type(e) for e in again] == [RunCompleted]
    assert again[0].text == model.answers[0]


async def test_channel_without_agent_answers_not_configured(
    sessions: async_sessionmaker[AsyncSession], make_executor: Callable[[Events], RunExecutor]
) -> None:
    events = Events()
    await make_executor(events).execute(await setup_run(sessions, None, "hi"), noop)
    [failed] = events
    assert isinstance(failed, RunFailed) and failed.category == FailureCategory.NOT_CONFIGURED
    assert failed.text == USER_MESSAGES[FailureCategory.NOT_CONFIGURED]


@pytest.mark.parametrize(
    ("status", "category"),
    [
        (401, FailureCategory.AUTH_FAILED),
        (429, FailureCategory.RATE_LIMITED),
        (500, FailureCategory.PROVIDER_ERROR),
    ],
)
async def test_provider_http_errors_become_user_sentences(
    sessions: async_sessionmaker[AsyncSession],
    scripted: tuple[ScriptedModel, str],
    make_executor: Callable[[Events], RunExecutor],
    status: int,
    category: FailureCategory,
) -> None:
    model, url = scripted
    model.fail_status = status
    events = Events()
    await make_executor(events).execute(await setup_run(sessions, openai_agent(url), "x"), noop)
    failed = events[-1]
    assert isinstance(failed, RunFailed) and failed.category == category
    assert failed.text == USER_MESSAGES[category]


async def test_model_server_down_is_a_provider_error_not_a_crash(
    sessions: async_sessionmaker[AsyncSession], make_executor: Callable[[Events], RunExecutor]
) -> None:
    events = Events()
    agent = openai_agent(f"http://127.0.0.1:{free_port()}/v1", timeout_s=5)
    await make_executor(events).execute(await setup_run(sessions, agent, "x"), noop)
    failed = events[-1]
    assert isinstance(failed, RunFailed) and failed.category == FailureCategory.PROVIDER_ERROR
