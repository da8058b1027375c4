"""RunExecutor against a real OpenAI-compatible HTTP server (scripted) and a migrated database."""

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.fernet import Fernet
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.consume import classify
from imgate_common.db.models import Agent, Message
from imgate_common.errors import ConfigurationError, FailureCategory
from imgate_common.messages import (
    RunCancelled,
    RunCompleted,
    RunDelta,
    RunFailed,
    RunStarted,
)
from imgate_common.wording import failure_sentence
from imgate_runner.service import RunExecutor
from imgate_runner.settings import RunnerSettings
from tests.runner.conftest import Events, noop, openai_agent, setup_run
from tests.support.openai_stub import ScriptedModel, free_port


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
    assert failed.text == failure_sentence(FailureCategory.NOT_CONFIGURED, "zh-CN")


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
    assert failed.text == failure_sentence(category, "zh-CN")


async def test_model_server_down_is_a_provider_error_not_a_crash(
    sessions: async_sessionmaker[AsyncSession], make_executor: Callable[[Events], RunExecutor]
) -> None:
    events = Events()
    agent = openai_agent(f"http://127.0.0.1:{free_port()}/v1", timeout_s=5)
    await make_executor(events).execute(await setup_run(sessions, agent, "x"), noop)
    failed = events[-1]
    assert isinstance(failed, RunFailed) and failed.category == FailureCategory.PROVIDER_ERROR


async def test_transient_errors_are_retried_before_the_first_token(
    sessions: async_sessionmaker[AsyncSession],
    scripted: tuple[ScriptedModel, str],
    make_executor: Callable[[Events], RunExecutor],
) -> None:
    model, url = scripted
    model.fail_status, model.fail_times = 503, 2
    events = Events()
    await make_executor(events).execute(await setup_run(sessions, openai_agent(url), "x"), noop)
    assert len(model.requests) == 3
    assert isinstance(events[-1], RunCompleted) and events[-1].text == model.answers[0]


async def test_a_bad_key_is_not_retried(
    sessions: async_sessionmaker[AsyncSession],
    scripted: tuple[ScriptedModel, str],
    make_executor: Callable[[Events], RunExecutor],
) -> None:
    model, url = scripted
    model.fail_status = 401
    await make_executor(Events()).execute(await setup_run(sessions, openai_agent(url), "x"), noop)
    assert len(model.requests) == 1


async def test_a_slow_first_token_times_out_with_the_agents_limit(
    sessions: async_sessionmaker[AsyncSession],
    scripted: tuple[ScriptedModel, str],
    make_executor: Callable[[Events], RunExecutor],
) -> None:
    model, url = scripted
    model.first_token_delay_s = 5
    events = Events()
    started = time.monotonic()
    await make_executor(events).execute(
        await setup_run(sessions, openai_agent(url, timeout_s=0.5), "x"), noop
    )
    assert time.monotonic() - started < 3
    assert isinstance(events[-1], RunFailed) and events[-1].category == FailureCategory.TIMED_OUT


async def test_stop_ends_the_model_stream_and_keeps_the_text_so_far(
    sessions: async_sessionmaker[AsyncSession],
    scripted: tuple[ScriptedModel, str],
    make_executor: Callable[[Events], RunExecutor],
) -> None:
    model, url = scripted
    model.word_delay_s = 0.05
    model.answer = lambda messages: " ".join(f"word{i}" for i in range(200))
    events = Events()
    executor = make_executor(events)
    request = await setup_run(sessions, openai_agent(url), "long story please")
    running = asyncio.create_task(executor.execute(request, noop))
    while len([e for e in events if isinstance(e, RunDelta)]) < 3:  # noqa: ASYNC110 (events arrive from the stream)
        await asyncio.sleep(0.02)
    assert executor.cancel(request.run_id)
    await asyncio.wait_for(running, 2)
    final = events[-1]
    assert isinstance(final, RunCancelled)
    assert final.partial_text.startswith("word0 word1 word2") and "word199" not in final.partial_text
    await asyncio.sleep(0.2)
    assert model.streams_closed_early == 1, "the HTTP stream to the model must be closed"
    async with sessions() as session:
        stored = (await session.exec(select(Message).where(Message.role == "assistant"))).one()
    assert stored.finish_reason == "cancelled" and stored.content == final.partial_text


async def test_a_redelivered_run_publishes_under_its_attempt_number(
    sessions: async_sessionmaker[AsyncSession],
    scripted: tuple[ScriptedModel, str],
    make_executor: Callable[[Events], RunExecutor],
) -> None:
    _, url = scripted
    ids: list[str] = []

    async def publish(subject: str, stream: str, model: BaseModel, msg_id: str) -> None:
        ids.append(msg_id)

    executor = make_executor(Events())
    executor._publish = publish  # type: ignore[assignment]
    request = await setup_run(sessions, openai_agent(url), "x")
    await executor.execute(request, noop, attempt=2)
    assert ids and all(i.startswith(f"{request.run_id}:2:") for i in ids)
    assert len(set(ids)) == len(ids), "every event of an attempt has its own dedup id"


async def test_anthropic_provider_streams_with_the_system_prompt_apart(
    sessions: async_sessionmaker[AsyncSession], make_executor: Callable[[Events], RunExecutor], tmp_path: Any
) -> None:
    from imgate_common.secrets import SecretBox as Box
    from tests.support.anthropic_stub import API_KEY, ScriptedClaude, sent_key, serve_scripted_claude

    claude = ScriptedClaude()
    key = Box.from_settings(RunnerSettings(data_dir=tmp_path)).encrypt(API_KEY)
    with serve_scripted_claude(claude) as url:
        agent = Agent(
            name=f"c-{uuid.uuid4().hex[:6]}",
            provider="anthropic",
            model="claude-test",
            base_url=url,
            api_key_enc=key,
            system_prompt="Answer in French.",
        )
        events = Events()
        await make_executor(events).execute(await setup_run(sessions, agent, "hello"), noop)
    assert isinstance(events[-1], RunCompleted) and events[-1].text == claude.answer
    assert len([e for e in events if isinstance(e, RunDelta)]) >= 2
    body = claude.requests[0]["body"]
    assert body["system"] == "Answer in French."
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]
    assert sent_key(claude.requests[0]["headers"]) == API_KEY


async def test_anthropic_bad_key_is_auth_failed(
    sessions: async_sessionmaker[AsyncSession], make_executor: Callable[[Events], RunExecutor], tmp_path: Any
) -> None:
    from imgate_common.secrets import SecretBox as Box
    from tests.support.anthropic_stub import ScriptedClaude, serve_scripted_claude

    key = Box.from_settings(RunnerSettings(data_dir=tmp_path)).encrypt("wrong")
    with serve_scripted_claude(ScriptedClaude()) as url:
        agent = Agent(name="c-bad", provider="anthropic", model="m", base_url=url, api_key_enc=key)
        events = Events()
        await make_executor(events).execute(await setup_run(sessions, agent, "hello"), noop)
    assert isinstance(events[-1], RunFailed) and events[-1].category == FailureCategory.AUTH_FAILED


async def test_pictures_go_to_a_vision_model_as_images_and_other_models_are_told(
    sessions: async_sessionmaker[AsyncSession],
    scripted: tuple[ScriptedModel, str],
    make_executor: Callable[[Events], RunExecutor],
    nats_client: Any,
) -> None:
    import base64

    from imgate_common.bus import MEDIA_BUCKET
    from imgate_common.messages import Attachment, MessageKind
    from imgate_runner.media import MediaReader

    model, url = scripted
    js = nats_client.jetstream()
    try:
        bucket = await js.object_store(MEDIA_BUCKET)
    except Exception:
        bucket = await js.create_object_store(MEDIA_BUCKET)
    picture = b"\x89PNG\r\n\x1a\n" + uuid.uuid4().bytes
    name = f"test/{uuid.uuid4().hex}"
    await bucket.put(name, picture)
    attachment = Attachment(
        kind=MessageKind.IMAGE, object_name=name, content_type="image/png", size=len(picture)
    )

    executor = make_executor(Events())
    executor._media = MediaReader(js)
    vision = openai_agent(url, supports_images=True)
    request = await setup_run(sessions, vision, "What is in this picture?")
    await executor.execute(request.model_copy(update={"attachments": [attachment]}), noop)
    content = model.requests[-1]["messages"][-1]["content"]
    assert content[0] == {"type": "text", "text": "What is in this picture?"}
    assert content[1]["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(picture).decode()

    blind = openai_agent(url)
    request = await setup_run(sessions, blind, "And this one?")
    await executor.execute(request.model_copy(update={"attachments": [attachment]}), noop)
    text = model.requests[-1]["messages"][-1]["content"]
    assert isinstance(text, str) and text.startswith("And this one?") and "picture" in text
    await bucket.delete(name)


async def test_an_agent_key_the_secret_keys_cannot_read_is_a_configuration_error(
    sessions: async_sessionmaker[AsyncSession],
    make_executor: Callable[[Events], RunExecutor],
    scripted: tuple[ScriptedModel, str],
) -> None:
    """Encrypted with a key that is no longer configured: ended at once, before any event."""
    _, url = scripted
    foreign = Fernet(Fernet.generate_key()).encrypt(b"sk-old").decode()
    request = await setup_run(sessions, openai_agent(url, api_key_enc=foreign), "hi")
    events = Events()
    with pytest.raises(ConfigurationError, match="cannot be decrypted") as raised:
        await make_executor(events).execute(request, noop)
    assert classify(raised.value).permanent and events == []


def test_stops_for_runs_elsewhere_are_not_kept_forever(
    make_executor: Callable[[Events], RunExecutor],
) -> None:
    """Every runner hears every /stop: ids of runs it never runs must not pile up."""
    executor = make_executor(Events())
    cap = RunnerSettings().cancelled_runs_max
    for n in range(cap + 500):
        assert not executor.cancel(f"elsewhere-{n}")
    assert len(executor._cancelled) == cap
    assert f"elsewhere-{cap + 499}" in executor._cancelled and "elsewhere-0" not in executor._cancelled
