"""Runs for the runner's tests: a migrated database, a scripted model, an executor."""

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from nats.js import JetStreamContext
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.db.models import Agent, Channel, Conversation, Message, User
from imgate_common.messages import RunRequest
from imgate_common.secrets import SecretBox
from imgate_runner.providers.registry import build_providers
from imgate_runner.service import RunExecutor
from imgate_runner.settings import RunnerSettings
from tests.support.factories import reply_target
from tests.support.nats_server import fresh_streams
from tests.support.openai_stub import ScriptedModel, serve_scripted_model


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


@pytest.fixture
async def js(private_nats: str) -> AsyncIterator[JetStreamContext]:
    async with fresh_streams(private_nats) as js:
        yield js
