"""A model that keeps streaming, slowly, forever: the run ends at the agent's timeout with the
timed-out sentence, and the HTTP stream to the model is closed (nothing outlives the run)."""

import asyncio
import time
from collections.abc import Callable

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.errors import FailureCategory
from imgate_common.messages import RunDelta, RunFailed
from imgate_runner.service import RunExecutor
from tests.runner.conftest import Events, noop, openai_agent, setup_run
from tests.support.openai_stub import ScriptedModel

TIMEOUT_S = 1.5


def endless(messages: object) -> str:
    return " ".join(f"w{i}" for i in range(100_000))


async def test_a_model_streaming_slowly_forever_ends_at_the_agents_timeout(
    sessions: async_sessionmaker[AsyncSession],
    scripted: tuple[ScriptedModel, str],
    make_executor: Callable[[Events], RunExecutor],
) -> None:
    model, url = scripted
    # A word every 0.2 s: each read comes well inside the HTTP client's own timeout, so only the
    # run's deadline can end it.
    model.word_delay_s = 0.2
    model.answer = endless
    events = Events()
    request = await setup_run(sessions, openai_agent(url, timeout_s=TIMEOUT_S), "tell me everything")
    started = time.monotonic()
    await asyncio.wait_for(make_executor(events).execute(request, noop), TIMEOUT_S + 10)
    took = time.monotonic() - started
    assert took < TIMEOUT_S + 2, f"the run outlived its timeout: {took:.1f} s"
    assert [e for e in events if isinstance(e, RunDelta)], "it had started answering"
    final = events[-1]
    assert isinstance(final, RunFailed) and final.category == FailureCategory.TIMED_OUT
    assert final.text, "the user reads a sentence"
    await asyncio.sleep(0.5)
    assert model.streams_closed_early == 1, "the HTTP stream to the model must be closed"
    assert model.in_flight == 0


async def test_a_model_that_stops_sending_mid_answer_ends_at_the_agents_timeout(
    sessions: async_sessionmaker[AsyncSession],
    scripted: tuple[ScriptedModel, str],
    make_executor: Callable[[Events], RunExecutor],
) -> None:
    model, url = scripted
    model.word_delay_s = 30.0  # one word, then silence with the connection open
    model.answer = endless
    events = Events()
    request = await setup_run(sessions, openai_agent(url, timeout_s=TIMEOUT_S), "hello?")
    started = time.monotonic()
    await asyncio.wait_for(make_executor(events).execute(request, noop), TIMEOUT_S + 10)
    assert time.monotonic() - started < TIMEOUT_S + 2
    final = events[-1]
    assert isinstance(final, RunFailed) and final.category == FailureCategory.TIMED_OUT


class SwallowingBus(Events):
    """Publishes slowly and, like nats-py's request (asyncio.wait_for on Python 3.11, when the
    reply lands as the task is cancelled), returns normally from a cancellation it caught."""

    swallowed = 0

    async def __call__(self, subject: str, stream: str, model: BaseModel, msg_id: str) -> None:
        try:
            await asyncio.sleep(0.3)
        except asyncio.CancelledError:
            self.swallowed += 1
        self.append(model)


async def test_a_timeout_swallowed_by_the_bus_client_still_ends_the_run(
    sessions: async_sessionmaker[AsyncSession],
    scripted: tuple[ScriptedModel, str],
    make_executor: Callable[[Events], RunExecutor],
) -> None:
    model, url = scripted
    model.word_delay_s = 0.05
    model.answer = endless
    events = SwallowingBus()
    request = await setup_run(sessions, openai_agent(url, timeout_s=TIMEOUT_S), "go on")
    started = time.monotonic()
    await asyncio.wait_for(make_executor(events).execute(request, noop), TIMEOUT_S + 10)
    assert events.swallowed >= 1, "the deadline came while a delta was being published"
    assert time.monotonic() - started < TIMEOUT_S + 2
    final = events[-1]
    assert isinstance(final, RunFailed) and final.category == FailureCategory.TIMED_OUT
    await asyncio.sleep(0.5)
    assert model.in_flight == 0, "the HTTP stream to the model must be closed"
