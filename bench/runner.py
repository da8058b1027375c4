"""Agent-runner figures: request → first delta, deltas/s with an instant model, local tokens/s.

Baselines, measured in the same run: publishing every model chunk as its own bus message
(no batching), and llama.cpp called directly without our streaming bridge.
"""

import asyncio
import logging
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import structlog
from measure import percentile
from pydantic import BaseModel

from imgate_common.db.engine import create_engine, session_factory
from imgate_common.db.migrate import upgrade_async
from imgate_common.db.models import Agent, Channel, Conversation, Message, User
from imgate_common.messages import ConversationType, ReplyTarget, RunDelta, RunRequest
from imgate_common.secrets import SecretBox
from imgate_runner.providers.base import ChatMessage, Generation, ModelProvider
from imgate_runner.providers.local import LocalProvider, bundled_model_path
from imgate_runner.service import RunExecutor
from imgate_runner.settings import RunnerSettings

CHUNKS = 400


class InstantProvider(ModelProvider):
    name: ClassVar[str] = "instant"

    async def stream(
        self, agent: Agent, api_key: str | None, messages: list[ChatMessage], generation: Generation
    ) -> AsyncIterator[str]:
        for i in range(CHUNKS):
            yield f"tok{i} "
            if i % 20 == 0:
                await asyncio.sleep(0)


class Recorder:
    def __init__(self) -> None:
        self.first_delta: float | None = None
        self.messages = 0

    async def __call__(self, subject: str, stream: str, model: BaseModel, msg_id: str) -> None:
        self.messages += 1
        if isinstance(model, RunDelta) and self.first_delta is None:
            self.first_delta = time.perf_counter()


async def _runs(data: Path, interval: float, max_chars: int, runs: int) -> tuple[float, float, float]:
    url = f"sqlite+aiosqlite:///{data}/bench-{uuid.uuid4().hex[:6]}.db"
    await upgrade_async(url)
    engine = create_engine(url)
    sessions = session_factory(engine)
    settings = RunnerSettings(data_dir=data, delta_interval_s=interval, delta_max_chars=max_chars)
    async with sessions() as session:
        agent = Agent(name="instant", provider="instant", timeout_s=60)
        channel = Channel(name="bench", platform="dingtalk")
        user = User(username="bench", auth_source="bench")
        session.add_all([agent, channel, user])
        await session.flush()
        conversation = Conversation(
            id=str(uuid.uuid4()), channel_id=channel.id, scope_key="k", user_id=user.id
        )
        session.add(conversation)
        await session.commit()
        ids = (agent.id, channel.id, user.id, conversation.id)
    firsts, rates, per_answer = [], [], []
    for _ in range(runs):
        recorder = Recorder()
        executor = RunExecutor(
            settings, sessions, SecretBox.from_settings(settings), {"instant": InstantProvider()}, recorder
        )
        run_id = str(uuid.uuid4())
        async with sessions() as session:
            message = Message(conversation_id=ids[3], role="user", content="hi", run_id=run_id)
            session.add(message)
            await session.commit()
            message_id = message.id
        request = RunRequest(
            run_id=run_id,
            channel_id=ids[1],  # type: ignore[arg-type]
            conversation_id=ids[3],
            agent_id=ids[0],
            user_id=ids[2],  # type: ignore[arg-type]
            user_message_id=message_id,  # type: ignore[arg-type]
            text="hi",
            target=ReplyTarget(
                platform="dingtalk",
                channel_id=1,
                conversation_id="c",
                conversation_type=ConversationType.SINGLE,
                sender_id="u",
                inbound_message_id=run_id,
            ),
        )

        async def beat() -> None:
            return None

        start = time.perf_counter()
        await executor.execute(request, beat)
        end = time.perf_counter()
        assert recorder.first_delta is not None
        firsts.append((recorder.first_delta - start) * 1000)
        rates.append(CHUNKS / (end - start))
        per_answer.append(recorder.messages)
    await engine.dispose()
    return percentile(firsts, 0.5), sum(rates) / len(rates), sum(per_answer) / len(per_answer)


async def _local_tokens_per_second() -> tuple[float, float]:
    agent = Agent(name="local", provider="local", max_output_tokens=64, temperature=0.0)
    prompt = [ChatMessage("user", "Write a short paragraph about the sea.")]
    async with LocalProvider() as provider:
        llama: Any = await provider._model()

        async def ours_once() -> float:
            start, count = time.perf_counter(), 0
            async for _ in provider.stream(agent, None, prompt, Generation()):
                count += 1
            return count / (time.perf_counter() - start)

        await ours_once()  # warm-up: the first generation pays for llama.cpp's set-up

        def direct() -> float:
            t0, n = time.perf_counter(), 0
            for _ in llama.create_chat_completion(
                messages=[{"role": "user", "content": prompt[0].content}],
                max_tokens=64,
                temperature=0.0,
                stream=True,
            ):
                n += 1
            return n / (time.perf_counter() - t0)

        ours = max([await ours_once() for _ in range(2)])
        base = max([await asyncio.to_thread(direct) for _ in range(2)])
    return ours, base


def rows(quick: bool = False) -> list[tuple[str, str, str, str]]:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory() as tmp:
        runs = 5 if quick else 20
        first, rate, msgs = asyncio.run(_runs(Path(tmp), 0.1, 200, runs))
        b_first, b_rate, b_msgs = asyncio.run(_runs(Path(tmp), 0.0, 1, runs))
    out = [
        (
            "runner: request → first delta p50 ms (instant model)",
            f"{first:.1f}",
            f"{b_first:.1f}",
            f"{b_first / first:.2f}x",
        ),
        (
            "runner: bus messages per 400-chunk answer",
            f"{msgs:.0f}",
            f"{b_msgs:.0f}",
            f"{b_msgs / msgs:.0f}x fewer",
        ),
        ("runner: model chunks handled/s per run", f"{rate:,.0f}", f"{b_rate:,.0f}", f"{rate / b_rate:.2f}x"),
    ]
    if bundled_model_path().exists():
        ours, base = asyncio.run(_local_tokens_per_second())
        out.append(
            (
                "local model tokens/s (SmolLM2-135M, this machine)",
                f"{ours:.1f}",
                f"{base:.1f}",
                f"{ours / base:.2f}x",
            )
        )
    return out
