"""Agent-runner process: consumes run requests, streams model answers back.

The run consumer is a plain nats-py pull loop rather than a FastStream subscriber: a runner must
take a run from JetStream only when it has a free slot, so work beyond the concurrency limit
waits in JetStream (where another runner can take it) and never in this process's memory.
"""

import asyncio
import contextlib

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry import trace

from imgate_common import telemetry
from imgate_common.bus import CANCEL_ALL, CONFIG_CHANGED, RUNS_STREAM, run_subject
from imgate_common.config_cache import ConfigCaches
from imgate_common.consume import DeliveryPolicy, Failure, settle
from imgate_common.consumers import ConsumerSpec, ensure_consumer, runner_consumer_spec
from imgate_common.conversation_queue import Claim, ConversationQueue
from imgate_common.messages import CancelRequest, RunRequest, utcnow
from imgate_common.publish import jetstream_publisher
from imgate_common.runtime import service_lifespan, service_main
from imgate_common.status import ChannelStatusStore
from imgate_runner.media import MediaReader
from imgate_runner.metrics import LOCKS_LOST, REDELIVERED_RUNS, RUN_WAIT
from imgate_runner.providers.registry import build_providers
from imgate_runner.service import RunExecutor, keep_alive
from imgate_runner.settings import RunnerSettings

log = structlog.get_logger()


def run_parent(request: RunRequest, msg: Msg) -> dict[str, str]:
    """The trace a run continues: its publisher's (the headers), unless it was published by the
    runner that finished the run before it in the queue, which belongs to another message."""
    headers = dict(msg.headers or {})
    own = trace.get_current_span(telemetry.extract(request.trace_context)).get_span_context()
    carried = trace.get_current_span(telemetry.extract(headers)).get_span_context()
    if own.is_valid and own.trace_id != carried.trace_id:
        return request.trace_context
    return headers


def identify(request: RunRequest) -> tuple[int | None, str | None]:
    return request.channel_id, request.run_id


class RunConsumer:
    """Takes runs from JetStream one free slot at a time and executes them."""

    def __init__(
        self,
        js: JetStreamContext,
        executor: RunExecutor,
        settings: RunnerSettings,
        queue: ConversationQueue | None = None,
        status: ChannelStatusStore | None = None,
        spec: ConsumerSpec | None = None,
    ) -> None:
        self._js = js
        self._executor = executor
        self._queue = queue
        self._status = status
        self._publish = jetstream_publisher(js)
        self._settings = settings
        self._spec = spec or runner_consumer_spec(settings.ack_wait_s)
        self._policy = DeliveryPolicy[RunRequest](self._spec, self._publish, self._give_up, identify)
        self._slots = asyncio.Semaphore(settings.max_concurrent_runs)
        self._running: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        # Declared (or brought to the current policy) first: binding alone keeps an old config.
        await ensure_consumer(self._js, self._spec)
        sub = await self._js.pull_subscribe_bind(durable=self._spec.durable, stream=self._spec.stream)
        taking = asyncio.create_task(self._take(sub))
        try:
            await stop.wait()
        finally:
            taking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await taking
            await self._drain()
            await sub.unsubscribe()

    async def _take(self, sub: JetStreamContext.PullSubscription) -> None:
        while True:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                # A cancellation swallowed by a fetch that then timed out: stop all the same.
                raise asyncio.CancelledError
            await self._slots.acquire()
            try:
                batch = await sub.fetch(1, timeout=1)
            except TimeoutError:  # nats.errors.TimeoutError is a subclass
                self._slots.release()
                continue
            except nats.errors.Error as exc:
                self._slots.release()
                log.warning("run_fetch_failed", error=str(exc))
                await asyncio.sleep(1)
                continue
            except asyncio.CancelledError:
                self._slots.release()
                raise
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                # Stopping, and the fetch returned a run instead of raising (asyncio.wait_for in
                # nats-py drops a cancellation that meets a result on Python 3.11): hand it back.
                self._slots.release()
                for msg in batch:
                    with contextlib.suppress(Exception):
                        await msg.nak()
                raise asyncio.CancelledError
            for msg in batch:
                task = asyncio.create_task(self._one(msg))
                self._running.add(task)
                task.add_done_callback(self._done)

    async def _publish_run(self, request: RunRequest) -> None:
        await self._publish(run_subject(request.channel_id), RUNS_STREAM, request, request.run_id)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._slots.release()

    async def _give_up(self, request: RunRequest | None, failure: Failure) -> None:
        """The run was dead-lettered: tell the user, show it on the channel, and pass the
        conversation's turn on (the next message must not wait behind a run that ended)."""
        if request is None:
            return
        await self._executor.give_up(request, failure)
        if self._status is not None:
            await self._status.record_error(request.channel_id, "agent-runner", failure.describe())
        if self._queue is not None:
            await self._queue.hand_over(request.run_id, request.conversation_id, self._publish_run)

    async def _one(self, msg: Msg) -> None:
        attempt = msg.metadata.num_delivered or 1

        async def handle(request: RunRequest) -> None:
            queue = self._queue
            claim = await queue.claim(request.conversation_id, request.run_id) if queue else None
            if claim == Claim.FINISHED:
                # A runner ended this run already (answered, failed, given up on) and handed its
                # conversation on: its request again (a redelivery, or a republish under the
                # same run id) must not call the model a second time. A replay is a new run.
                log.info("run_already_finished", run_id=request.run_id)
                return
            if claim == Claim.OVERTAKEN:
                # Its lock expired while it waited and a later run started: it runs all the
                # same (the user's message is answered), and the operator sees it.
                LOCKS_LOST.inc()
                log.warning("run_lock_overtaken", run_id=request.run_id)

            async def heartbeat() -> None:
                """Alive for JetStream, and the conversation's lock renewed."""
                await msg.in_progress()
                if queue is not None and claim == Claim.HELD:
                    if not await queue.refresh(request.conversation_id, request.run_id):
                        LOCKS_LOST.inc()
                        log.warning("run_lock_lost", run_id=request.run_id)

            attributes = {
                telemetry.RUN_ID: request.run_id,
                telemetry.CHANNEL_ID: request.channel_id,
                telemetry.CONVERSATION_ID: request.conversation_id,
                telemetry.ATTEMPT: attempt,
            }
            with (
                telemetry.consumer_span("run", run_parent(request, msg), attributes) as span,
                structlog.contextvars.bound_contextvars(
                    run_id=request.run_id,
                    channel_id=request.channel_id,
                    conversation_id=request.conversation_id,
                ),
            ):
                waited = max(0.0, (utcnow() - request.requested_at).total_seconds())
                span.add_event("queue_wait", {"seconds": waited})
                telemetry.set_content(span, "imgate.message.text", request.text)
                if attempt == 1:
                    RUN_WAIT.observe(waited)
                else:
                    REDELIVERED_RUNS.inc()
                # Alive for JetStream from start to hand-over, not only while the model streams:
                # a slow database must not get the run redelivered to a second runner meanwhile.
                async with keep_alive(heartbeat, self._settings.in_progress_interval_s):
                    await self._executor.execute(request, heartbeat, attempt)
                    if self._queue is not None:
                        # The conversation's next message may run now; a failure here retries
                        # the whole step, and the stored answer keeps the model from running twice.
                        await self._queue.hand_over(
                            request.run_id, request.conversation_id, self._publish_run
                        )

        try:
            await settle(RunRequest, msg, handle, self._policy)
        except asyncio.CancelledError:
            # Shutting down before the run finished: hand it back now rather than after ack_wait.
            with contextlib.suppress(Exception):
                await msg.nak()
            raise

    async def _drain(self) -> None:
        if not self._running:
            return
        log.info("runner_draining", runs=len(self._running))
        _, pending = await asyncio.wait(self._running, timeout=self._settings.drain_timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def serve(settings: RunnerSettings, stop: asyncio.Event) -> None:
    # No pre-ping round trip per session: a connection that died in the pool fails its
    # statement, and the run goes back to JetStream and is done again (as on any database error).
    async with service_lifespan(settings, "agent-runner", pre_ping=False) as runtime:
        runtime.stack.callback(log.info, "runner_stopped")
        queue = ConversationQueue(
            runtime.redis,
            settings.redis_prefix,
            settings.conversation_active_ttl_s,
            lease_ttl_s=settings.conversation_lease_ttl_s,
        )
        providers = build_providers(settings)
        for provider in providers.values():
            await runtime.stack.enter_async_context(provider)
        executor = RunExecutor(
            settings,
            runtime.sessions,
            await runtime.secret_box(),
            providers,
            jetstream_publisher(runtime.js),
            MediaReader(runtime.js),
        )

        async def on_cancel(msg: Msg) -> None:
            try:
                request = CancelRequest.model_validate_json(msg.data)
            except ValueError:
                log.warning("cancel_invalid", subject=msg.subject)
                return
            if executor.cancel(request.run_id):
                log.info("run_cancel_requested", run_id=request.run_id)

        cancels = await runtime.nc.subscribe(CANCEL_ALL, cb=on_cancel)
        runtime.stack.push_async_callback(cancels.unsubscribe)
        # An administrator changed an agent (or a channel): read agents afresh.
        changes = await runtime.nc.subscribe(CONFIG_CHANGED, cb=ConfigCaches(executor.agents).on_notice)
        runtime.stack.push_async_callback(changes.unsubscribe)
        log.info("runner_started", providers=sorted(providers), slots=settings.max_concurrent_runs)
        status = ChannelStatusStore(runtime.redis, settings.redis_prefix)
        await RunConsumer(runtime.js, executor, settings, queue, status).run(stop)


def main() -> None:
    service_main("agent-runner", RunnerSettings(), serve)


if __name__ == "__main__":
    main()
