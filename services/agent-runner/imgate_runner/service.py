"""Executes one run request: agent, history, model stream, reply events, stored answer."""

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace

import nats.errors
import structlog
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from imgate_common.bounded import BoundedSet
from imgate_common.bus import REPLIES_STREAM, reply_subject
from imgate_common.channels import agent_api_key
from imgate_common.config_cache import ConfigCache
from imgate_common.consume import Failure
from imgate_common.db.models import Agent, Conversation, Message, utcnow
from imgate_common.errors import ConfigurationError, FailureCategory, ProviderError
from imgate_common.messages import (
    AnyReplyEvent,
    MessageKind,
    RunCancelled,
    RunCompleted,
    RunDelta,
    RunFailed,
    RunRequest,
    RunStarted,
)
from imgate_common.publish import Publish
from imgate_common.secrets import SecretBox
from imgate_common.telemetry import fail, set_content, tracer
from imgate_common.wording import failure_sentence
from imgate_runner.batching import DeltaBatcher
from imgate_runner.history import build_prompt, history_limit, load_history
from imgate_runner.media import MediaReader
from imgate_runner.metrics import (
    MODEL_TOKENS,
    RUN_DURATION,
    RUNS_FINISHED,
    RUNS_IN_FLIGHT,
    RUNS_STARTED,
    TIME_TO_FIRST_TOKEN,
)
from imgate_runner.providers.base import ChatMessage, Generation, ModelProvider
from imgate_runner.settings import RunnerSettings

log = structlog.get_logger()

# The failed event of a run the runner gave up on comes after anything an attempt of it sent.
GAVE_UP_SEQ = 2_000_000

Heartbeat = Callable[[], Awaitable[None]]


@contextlib.asynccontextmanager
async def keep_alive(heartbeat: Heartbeat, interval_s: float) -> AsyncIterator[None]:
    """Tell JetStream the run is alive while it waits for the model or streams, so a slow run is
    never redelivered to a second runner (which would answer twice)."""

    # The flag ends the loop too: on Python 3.11 a library call inside the heartbeat (redis-py,
    # nats-py) can swallow the cancellation, and the loop would then beat, and hold its run's
    # task (its slot, its ack), forever.
    over = asyncio.Event()

    async def beat() -> None:
        while not over.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(over.wait(), interval_s)
            if over.is_set():
                return
            try:
                await heartbeat()
            except Exception as exc:
                log.warning("run_heartbeat_failed", error=str(exc))

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        over.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, ProviderError) and exc.transient


async def stream_with_retry(
    provider: ModelProvider,
    agent: Agent,
    api_key: str | None,
    prompt: list[ChatMessage],
    generation: Generation,
    attempts: int,
) -> AsyncGenerator[str, None]:
    """Retry transient provider errors with back-off until the first token; never after it,
    because the user would see the answer start twice."""
    stream: AsyncIterator[str] | None = None
    first: str | None = None
    async for attempt in AsyncRetrying(
        retry=retry_if_exception(_transient),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential_jitter(multiplier=0.5, max=8),
        reraise=True,
    ):
        with attempt:
            stream = aiter(provider.stream(agent, api_key, prompt, generation))
            try:
                first = await anext(stream)
            except StopAsyncIteration:
                first = None
    if first is None or stream is None:
        return
    yield first
    async for chunk in stream:
        yield chunk


@dataclass
class RunProgress:
    """One attempt at one run: what was said so far and how long it took."""

    request: RunRequest
    attempt: int
    batcher: DeltaBatcher
    seq: int = 0
    generation: Generation = field(default_factory=Generation)
    started: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    provider: str | None = None

    @property
    def common(self) -> dict[str, object]:
        return {
            "run_id": self.request.run_id,
            "channel_id": self.request.channel_id,
            "target": self.request.target,
            "attempt": self.attempt,
        }

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def ttft_ms(self) -> int | None:
        return int((self.first_token - self.started) * 1000) if self.first_token else None


class RunExecutor:
    def __init__(
        self,
        settings: RunnerSettings,
        sessions: async_sessionmaker[AsyncSession],
        box: SecretBox,
        providers: dict[str, ModelProvider],
        publish: Publish,
        media: MediaReader | None = None,
    ) -> None:
        self._media = media
        self._settings = settings
        self._sessions = sessions
        self._box = box
        self._providers = providers
        self._publish = publish
        self._streams: dict[str, asyncio.Task[None]] = {}  # run id → its model stream here
        # Every runner hears every `/stop`; the run may be waiting in JetStream for a runner (the
        # first to take it must find it cancelled), or run elsewhere and never come here. So the
        # id is kept only as long as a run can wait for a runner, and at most so many of them.
        self._cancelled = BoundedSet(settings.cancelled_runs_max, ttl_s=settings.conversation_active_ttl_s)
        self.agents: ConfigCache[int, Agent] = ConfigCache()

    async def _agent(self, session: AsyncSession, agent_id: int) -> Agent | None:
        """The run's agent, from memory when it was read lately (emptied on a change notice)."""
        agent = self.agents.get(agent_id)
        if agent is None:
            agent = await session.get(Agent, agent_id)
            if agent is not None:
                session.expunge(agent)  # read only, shared by the agent's runs
                self.agents.put(agent_id, agent)
        return agent

    async def _emit(self, event: AnyReplyEvent) -> None:
        subject = reply_subject(event.channel_id, event.run_id)
        msg_id = f"{event.run_id}:{event.attempt}:{event.kind}:{event.seq}"
        await self._publish(subject, REPLIES_STREAM, event, msg_id)

    def cancel(self, run_id: str) -> bool:
        """`/stop`: end the model call of a run streaming in this process; False if not here."""
        self._cancelled.add(run_id)
        task = self._streams.get(run_id)
        if task is None:
            return False
        task.cancel()
        return True

    async def execute(self, request: RunRequest, heartbeat: Heartbeat, attempt: int = 1) -> None:
        bound = log.bind(run_id=request.run_id, channel_id=request.channel_id, attempt=attempt)
        progress = RunProgress(
            request, attempt, DeltaBatcher(self._settings.delta_interval_s, self._settings.delta_max_chars)
        )
        async with self._sessions() as session:
            done = await self._stored_answer(session, request.run_id)
            if done is not None:
                # Redelivered after it finished: repeat the final event, never the model call.
                bound.info("run_already_answered")
                await self._emit(RunCompleted(**progress.common, seq=1_000_000, text=done.content))  # type: ignore[arg-type]
                return
            agent = await self._agent(session, request.agent_id) if request.agent_id else None
            limit = history_limit(agent, self._settings.history_max_messages)
            history = await load_history(session, request.conversation_id, request.user_message_id, limit)
        span = trace.get_current_span()
        if agent is None or agent.provider not in self._providers:
            bound.warning("run_without_agent", agent_id=request.agent_id)
            await self._fail(progress, FailureCategory.NOT_CONFIGURED)
            return
        progress.provider = agent.provider
        span.set_attributes(
            {
                "gen_ai.system": agent.provider,
                "gen_ai.request.model": agent.model,
                "imgate.agent_id": agent.id or 0,
            }
        )
        if request.run_id in self._cancelled:
            await self._finish_cancelled(progress, bound)
            return
        api_key = self._api_key(agent)
        await self._emit(RunStarted(**progress.common, seq=progress.next_seq()))  # type: ignore[arg-type]
        RUNS_STARTED.labels(agent.provider).inc()
        prompt = await self._with_attachments(agent, build_prompt(agent, history), request)
        stream = asyncio.create_task(self._stream(agent, api_key, prompt, progress))
        self._streams[request.run_id] = stream
        RUNS_IN_FLIGHT.inc()
        try:
            async with keep_alive(heartbeat, self._settings.in_progress_interval_s):
                await stream
        except asyncio.CancelledError:
            if asyncio.current_task() is not None and asyncio.current_task().cancelling():  # type: ignore[union-attr]
                stream.cancel()
                span.add_event("run_handed_back")
                raise  # this process is shutting down: the run goes back to JetStream
            await self._finish_cancelled(progress, bound)
            return
        except nats.errors.Error:
            # The bus, not the model, failed (its TimeoutError is also a TimeoutError): the run
            # goes back to JetStream and is done again, rather than told to the user as a timeout.
            raise
        except TimeoutError:
            bound.warning("run_timed_out", timeout_s=agent.timeout_s)
            await self._fail(progress, FailureCategory.TIMED_OUT)
            return
        except ProviderError as exc:
            bound.warning("run_provider_failed", category=exc.category, error=str(exc))
            await self._fail(progress, exc.category)
            return
        finally:
            RUNS_IN_FLIGHT.dec()
            self._streams.pop(request.run_id, None)
        await self._flush(progress)
        answer = progress.batcher.text.strip() or "(the model returned an empty answer)"
        await self._store(progress, answer, progress.generation.usage.finish_reason)
        await self._emit(
            RunCompleted(
                **progress.common,  # type: ignore[arg-type]
                seq=progress.next_seq(),
                text=answer,
                finish_reason=progress.generation.usage.finish_reason,
            )
        )
        bound.info("run_completed", chars=len(answer), ttft_ms=progress.ttft_ms())
        self._finished(progress, "completed")

    async def _with_attachments(
        self, agent: Agent, prompt: list[ChatMessage], request: RunRequest
    ) -> list[ChatMessage]:
        """Pictures go to a vision model as images; any other model is told one was attached."""
        pictures = [a for a in request.attachments if a.kind == MessageKind.IMAGE]
        if not pictures or not prompt or prompt[-1].role != "user":
            return prompt
        last = prompt[-1]
        images = await self._media.images(pictures) if agent.supports_images and self._media else []
        if images:
            return [*prompt[:-1], replace(last, images=tuple(images))]
        note = f"(The user attached {len(pictures)} picture(s) that you cannot see.)"
        return [*prompt[:-1], replace(last, content=f"{last.content}\n\n{note}".strip())]

    def _api_key(self, agent: Agent) -> str | None:
        try:
            return agent_api_key(agent, self._box)
        except ValueError as exc:
            # The secret keys changed without re-encrypting this agent's key: only an
            # administrator can fix that, so the run ends now instead of being retried.
            raise ConfigurationError(
                f"agent {agent.id} ({agent.name}): its API key cannot be decrypted with the configured "
                "secret keys (IMGATE_SECRET_KEYS); enter the key again"
            ) from exc

    async def give_up(self, request: RunRequest, failure: Failure) -> None:
        """The run was dead-lettered: end the user's card with the failure's sentence."""
        event = RunFailed(
            run_id=request.run_id,
            channel_id=request.channel_id,
            target=request.target,
            seq=GAVE_UP_SEQ,
            category=failure.category,
            text=failure_sentence(failure.category, request.language),
        )
        await self._publish(
            reply_subject(request.channel_id, request.run_id),
            REPLIES_STREAM,
            event,
            f"{request.run_id}:gave-up",
        )
        RUNS_FINISHED.labels("none", "dead_lettered", failure.category.value).inc()

    async def _stream(
        self, agent: Agent, api_key: str | None, prompt: list[ChatMessage], progress: RunProgress
    ) -> None:
        attributes = {"gen_ai.system": agent.provider, "gen_ai.request.model": agent.model}
        with tracer().start_as_current_span(
            f"model.stream {agent.provider}",
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
        ) as span:
            try:
                await self._stream_chunks(agent, api_key, prompt, progress, span)
            except ProviderError as exc:
                span.set_attribute("error.type", str(exc.category))
                fail(span, exc)
                raise
            except TimeoutError as exc:
                fail(span, exc)
                raise
            finally:
                usage = progress.generation.usage
                for key, value in (
                    ("gen_ai.usage.input_tokens", usage.prompt_tokens),
                    ("gen_ai.usage.output_tokens", usage.completion_tokens),
                    ("imgate.ttft_ms", progress.ttft_ms()),
                ):
                    if value is not None:
                        span.set_attribute(key, value)
                if usage.finish_reason:
                    span.set_attribute("gen_ai.response.finish_reasons", [usage.finish_reason])
                set_content(span, "imgate.answer.text", progress.batcher.text)

    async def _stream_chunks(
        self, agent: Agent, api_key: str | None, prompt: list[ChatMessage], progress: RunProgress, span: Span
    ) -> None:
        async with asyncio.timeout(agent.timeout_s) as deadline:
            chunks = stream_with_retry(
                self._providers[agent.provider],
                agent,
                api_key,
                prompt,
                progress.generation,
                self._settings.provider_attempts,
            )
            asked = time.monotonic()
            async with contextlib.aclosing(chunks):  # the model's stream closes with the run
                async for chunk in chunks:
                    if progress.first_token is None:
                        progress.first_token = time.monotonic()
                        span.add_event("first_token")
                        TIME_TO_FIRST_TOKEN.labels(agent.provider).observe(progress.first_token - asked)
                    batch = progress.batcher.add(chunk)
                    if batch is not None:
                        await self._delta(progress, batch)
                    if deadline.expired():
                        # The deadline's cancellation was swallowed on the way (nats-py's request,
                        # asyncio.wait_for on 3.11, returns a reply that landed as it was
                        # cancelled), and it never comes twice: the run ends here all the same.
                        raise TimeoutError

    async def _delta(self, progress: RunProgress, batch: str) -> None:
        await self._emit(
            RunDelta(
                **progress.common,  # type: ignore[arg-type]
                seq=progress.next_seq(),
                text=batch,
                length=len(progress.batcher.text),
            )
        )

    async def _flush(self, progress: RunProgress) -> None:
        batch = progress.batcher.flush()
        if batch is not None:
            await self._delta(progress, batch)

    async def _finish_cancelled(self, progress: RunProgress, bound: structlog.BoundLogger) -> None:
        await self._flush(progress)
        partial = progress.batcher.text.strip()
        await self._store(progress, partial or "(stopped)", "cancelled")
        await self._emit(RunCancelled(**progress.common, seq=progress.next_seq(), partial_text=partial))  # type: ignore[arg-type]
        self._cancelled.discard(progress.request.run_id)
        bound.info("run_cancelled", chars=len(partial))
        self._finished(progress, "cancelled")

    async def _fail(self, progress: RunProgress, category: FailureCategory) -> None:
        await self._flush(progress)
        event = RunFailed(
            **progress.common,  # type: ignore[arg-type]
            seq=progress.next_seq(),
            category=category,
            text=failure_sentence(category, progress.request.language),
            partial_text=progress.batcher.text,
        )
        await self._emit(event)
        trace.get_current_span().set_attribute("error.type", str(category))
        self._finished(progress, "failed", category)

    @staticmethod
    def _finished(progress: RunProgress, outcome: str, category: FailureCategory | None = None) -> None:
        provider = progress.provider or "none"
        RUNS_FINISHED.labels(provider, outcome, str(category) if category else "").inc()
        RUN_DURATION.labels(provider, outcome).observe(time.monotonic() - progress.started)
        usage = progress.generation.usage
        for kind, count in (("input", usage.prompt_tokens), ("output", usage.completion_tokens)):
            if count:
                MODEL_TOKENS.labels(provider, kind).inc(count)
        trace.get_current_span().set_attribute("imgate.run.outcome", outcome)

    async def _stored_answer(self, session: AsyncSession, run_id: str) -> Message | None:
        query = select(Message).where(Message.run_id == run_id, Message.role == "assistant")
        return (await session.exec(query)).first()

    async def _store(self, progress: RunProgress, answer: str, finish_reason: str | None) -> None:
        usage = progress.generation.usage
        async with self._sessions() as session:
            # One statement, no row read first; before the answer is added, so that no
            # autoflush inserts it outside the try below.
            await session.exec(
                update(Conversation)
                .where(col(Conversation.id) == progress.request.conversation_id)
                .values(last_activity_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            session.add(
                Message(
                    conversation_id=progress.request.conversation_id,
                    role="assistant",
                    content=answer,
                    run_id=progress.request.run_id,
                    prompt_tokens=usage.prompt_tokens,
                    completion_tokens=usage.completion_tokens,
                    ttft_ms=progress.ttft_ms(),
                    duration_ms=int((time.monotonic() - progress.started) * 1000),
                    finish_reason=finish_reason,
                )
            )
            try:
                await session.commit()
            except IntegrityError:
                log.info("run_answer_already_stored", run_id=progress.request.run_id)
