"""Executes one run request: agent, history, model stream, reply events, stored answer."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.bus import REPLIES_STREAM, reply_subject
from imgate_common.channels import agent_api_key
from imgate_common.db.models import Agent, Conversation, Message, utcnow
from imgate_common.errors import USER_MESSAGES, FailureCategory, ProviderError
from imgate_common.messages import (
    AnyReplyEvent,
    RunCompleted,
    RunDelta,
    RunFailed,
    RunRequest,
    RunStarted,
)
from imgate_common.publish import Publish
from imgate_common.secrets import SecretBox
from imgate_runner.batching import DeltaBatcher
from imgate_runner.history import build_prompt, load_history
from imgate_runner.providers.base import Generation, ModelProvider
from imgate_runner.settings import RunnerSettings

log = structlog.get_logger()

Heartbeat = Callable[[], Awaitable[None]]


@contextlib.asynccontextmanager
async def keep_alive(heartbeat: Heartbeat, interval_s: float) -> AsyncIterator[None]:
    """Tell JetStream the run is alive while it waits for the model or streams, so a slow run is
    never redelivered to a second runner (which would answer twice)."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await heartbeat()
            except Exception as exc:
                log.warning("run_heartbeat_failed", error=str(exc))

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class RunExecutor:
    def __init__(
        self,
        settings: RunnerSettings,
        sessions: async_sessionmaker[AsyncSession],
        box: SecretBox,
        providers: dict[str, ModelProvider],
        publish: Publish,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._box = box
        self._providers = providers
        self._publish = publish

    async def _emit(self, event: AnyReplyEvent) -> None:
        subject = reply_subject(event.channel_id, event.run_id)
        await self._publish(subject, REPLIES_STREAM, event, f"{event.run_id}:{event.kind}:{event.seq}")

    async def execute(self, request: RunRequest, heartbeat: Heartbeat) -> None:
        bound = log.bind(run_id=request.run_id, channel_id=request.channel_id)
        common = {"run_id": request.run_id, "channel_id": request.channel_id, "target": request.target}
        async with self._sessions() as session:
            done = await self._stored_answer(session, request.run_id)
            if done is not None:
                # Redelivered after it finished: repeat the final event, never the model call.
                bound.info("run_already_answered")
                await self._emit(RunCompleted(**common, seq=1_000_000, text=done.content))
                return
            agent = await session.get(Agent, request.agent_id) if request.agent_id else None
            history = await load_history(session, request.conversation_id, request.user_message_id)
        if agent is None or agent.provider not in self._providers:
            bound.warning("run_without_agent", agent_id=request.agent_id)
            await self._fail(common, 1, FailureCategory.NOT_CONFIGURED, "")
            return
        await self._emit(RunStarted(**common, seq=0))
        batcher = DeltaBatcher(self._settings.delta_interval_s, self._settings.delta_max_chars)
        generation = Generation()
        seq = 1
        started = time.monotonic()
        first_token: float | None = None
        try:
            async with (
                keep_alive(heartbeat, self._settings.in_progress_interval_s),
                asyncio.timeout(agent.timeout_s),
            ):
                stream = self._providers[agent.provider].stream(
                    agent, agent_api_key(agent, self._box), build_prompt(agent, history), generation
                )
                async for chunk in stream:
                    first_token = first_token or time.monotonic()
                    batch = batcher.add(chunk)
                    if batch is not None:
                        await self._emit(RunDelta(**common, seq=seq, text=batch, length=len(batcher.text)))
                        seq += 1
        except TimeoutError:
            await self._fail(common, seq, FailureCategory.TIMED_OUT, batcher.text)
            return
        except ProviderError as exc:
            bound.warning("run_provider_failed", category=exc.category, error=str(exc))
            await self._fail(common, seq, exc.category, batcher.text)
            return
        batch = batcher.flush()
        if batch is not None:
            await self._emit(RunDelta(**common, seq=seq, text=batch, length=len(batcher.text)))
            seq += 1
        answer = batcher.text.strip() or "(the model returned an empty answer)"
        finished = time.monotonic()
        await self._store(request, answer, generation, started, first_token, finished)
        await self._emit(
            RunCompleted(**common, seq=seq, text=answer, finish_reason=generation.usage.finish_reason)
        )
        bound.info(
            "run_completed",
            chars=len(answer),
            ttft_ms=int((first_token - started) * 1000) if first_token else None,
            duration_ms=int((finished - started) * 1000),
        )

    async def _fail(
        self,
        common: dict[str, object],
        seq: int,
        category: FailureCategory,
        partial: str,
    ) -> None:
        event = RunFailed(
            **common, seq=seq, category=category, text=USER_MESSAGES[category], partial_text=partial
        )  # type: ignore[arg-type]
        await self._emit(event)

    async def _stored_answer(self, session: AsyncSession, run_id: str) -> Message | None:
        query = select(Message).where(Message.run_id == run_id, Message.role == "assistant")
        return (await session.exec(query)).first()

    async def _store(
        self,
        request: RunRequest,
        answer: str,
        generation: Generation,
        started: float,
        first_token: float | None,
        finished: float,
    ) -> None:
        async with self._sessions() as session:
            session.add(
                Message(
                    conversation_id=request.conversation_id,
                    role="assistant",
                    content=answer,
                    run_id=request.run_id,
                    prompt_tokens=generation.usage.prompt_tokens,
                    completion_tokens=generation.usage.completion_tokens,
                    ttft_ms=int((first_token - started) * 1000) if first_token else None,
                    duration_ms=int((finished - started) * 1000),
                    finish_reason=generation.usage.finish_reason,
                )
            )
            conversation = await session.get(Conversation, request.conversation_id)
            if conversation is not None:
                conversation.last_activity_at = utcnow()
                session.add(conversation)
            try:
                await session.commit()
            except IntegrityError:
                log.info("run_answer_already_stored", run_id=request.run_id)
