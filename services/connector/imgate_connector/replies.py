"""One channel's reply events, from its durable consumer into its renderer.

Events of different runs are handled concurrently, events of one run in order. An event is
acknowledged once the renderer is done with it (a final one: once the answer is delivered), and
kept alive meanwhile; one that fails is redelivered later. When the channel stops here, what is
in hand goes back to JetStream at once, so the channel's next owner carries on without waiting.
"""

import asyncio
import contextlib

import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from imgate_common import telemetry
from imgate_common.bus import REPLIES_STREAM, channel_replies, reply_consumer, reply_subject
from imgate_common.messages import REPLY_EVENT, ReplyEvent, RunDelta
from imgate_connector.rendering import CardRenderer

log = structlog.get_logger()

# Consumers of deleted channels disappear after a day without a reader.
INACTIVE_THRESHOLD_S = 24 * 3600
# An idle channel asks for new events this often (one long-poll request at a time).
POLL_S = 5.0
# Events in hand at once per channel; JetStream holds back the rest.
MAX_IN_FLIGHT = 256
# A failing event is redelivered after a growing delay, up to this many times in all.
MAX_DELIVER = 20
# Runs idle this long are forgotten by the renderer (checked this often).
SWEEP_EVERY_S = 60.0


class ReplyConsumer:
    def __init__(
        self,
        js: JetStreamContext,
        channel_id: int,
        renderer: CardRenderer,
        *,
        ack_wait_s: float = 10.0,
        forget_idle_s: float = 3600.0,
    ) -> None:
        self._js = js
        self._channel_id = channel_id
        self._renderer = renderer
        self._ack_wait = ack_wait_s
        self._forget_idle = forget_idle_s
        self._chains: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._log = log.bind(channel_id=channel_id)

    async def run(self) -> None:
        """Runs until cancelled. The durable consumer keeps the position across owners, and starts
        at new events when first created so an old run is never replayed into a new card."""
        config = ConsumerConfig(
            durable_name=reply_consumer(self._channel_id),
            filter_subject=channel_replies(self._channel_id),
            deliver_policy=DeliverPolicy.NEW,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._ack_wait,
            max_deliver=MAX_DELIVER,
            max_ack_pending=MAX_IN_FLIGHT * 4,
            inactive_threshold=INACTIVE_THRESHOLD_S,
        )
        try:
            # Creates the consumer, or brings an existing one's settings up to date.
            await self._js.add_consumer(REPLIES_STREAM, config)
        except Exception as exc:  # an older consumer that cannot change: use it as it is
            self._log.warning("reply_consumer_not_updated", error=str(exc))
        sub = await self._js.pull_subscribe(
            channel_replies(self._channel_id),
            durable=reply_consumer(self._channel_id),
            stream=REPLIES_STREAM,
            config=config,
        )
        swept = asyncio.get_running_loop().time()
        try:
            while True:
                await self._slots.acquire()
                try:
                    [msg] = await sub.fetch(1, timeout=POLL_S)
                except TimeoutError:  # nats.errors.TimeoutError is a subclass
                    self._slots.release()
                    continue
                except Exception as exc:  # the bus is away: try again shortly
                    self._slots.release()
                    self._log.warning("reply_fetch_failed", error=str(exc) or type(exc).__name__)
                    await asyncio.sleep(1)
                    continue
                if _cancel_swallowed():
                    # The channel is stopping: this event goes back for its next owner.
                    self._slots.release()
                    with contextlib.suppress(Exception):
                        await msg.nak()
                    raise asyncio.CancelledError
                await self._dispatch(msg)
                now = asyncio.get_running_loop().time()
                if now - swept > SWEEP_EVERY_S:
                    swept = now
                    if forgotten := self._renderer.sweep(self._forget_idle):
                        self._log.info("idle_runs_forgotten", runs=forgotten)
        finally:
            chains = list(self._chains.values())
            for task in chains:
                task.cancel()
            await asyncio.gather(*chains, return_exceptions=True)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _dispatch(self, msg: Msg) -> None:
        try:
            event = REPLY_EVENT.validate_json(msg.data)
        except ValidationError as exc:
            self._log.error("reply_event_invalid", error=str(exc)[:300])
            self._slots.release()
            with contextlib.suppress(Exception):
                await msg.term()  # it will never parse: do not redeliver it
            return
        before = self._chains.get(event.run_id)
        task = asyncio.create_task(self._handle(msg, event, before), name=f"reply-{event.run_id}")
        self._chains[event.run_id] = task

        def done(finished: asyncio.Task[None]) -> None:
            self._slots.release()
            if self._chains.get(event.run_id) is finished:
                del self._chains[event.run_id]

        task.add_done_callback(done)

    async def _handle(self, msg: Msg, event: ReplyEvent, before: asyncio.Task[None] | None) -> None:
        keep_alive: asyncio.Task[None] | None = None
        try:
            if before is not None:
                await asyncio.wait([before])  # the run's earlier events first
            keep_alive = asyncio.create_task(self._keep_alive(msg))
            with self._span(msg, event), structlog.contextvars.bound_contextvars(run_id=event.run_id):
                await self._renderer.handle(event)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                with contextlib.suppress(Exception):
                    await msg.nak()  # back to JetStream now: the channel's next owner takes it
                raise
            # Not our cancellation (something we waited for was stopped): a failure like others.
            self._log.error("reply_render_interrupted", run_id=event.run_id, kind=event.kind)
            with contextlib.suppress(Exception):
                await msg.nak(delay=2.0)
            return
        except Exception as exc:
            deliveries = msg.metadata.num_delivered or 1
            self._log.exception("reply_render_failed", run_id=event.run_id, kind=event.kind, error=str(exc))
            with contextlib.suppress(Exception):
                await msg.nak(delay=min(30.0, 2.0**deliveries))
            return
        finally:
            if keep_alive is not None:
                keep_alive.cancel()
        try:
            await msg.ack()
        except Exception as exc:  # redelivered later; the renderer knows it answered
            self._log.warning("reply_ack_failed", run_id=event.run_id, error=str(exc))

    def _span(self, msg: Msg, event: ReplyEvent) -> contextlib.AbstractContextManager[object]:
        """The event's span in its message's trace. Deltas get none: the card updates they cause
        are spans of their own, and a span per delta would bury the trace."""
        if isinstance(event, RunDelta):
            return contextlib.nullcontext()
        attributes = {
            telemetry.RUN_ID: event.run_id,
            telemetry.CHANNEL_ID: event.channel_id,
            telemetry.ATTEMPT: event.attempt,
        }
        return telemetry.consumer_span(f"reply.{event.kind}", msg.headers, attributes)

    async def _keep_alive(self, msg: Msg) -> None:
        """A final that waits for the card budget must not be redelivered meanwhile."""
        while True:
            await asyncio.sleep(self._ack_wait / 2)
            with contextlib.suppress(Exception):
                await msg.in_progress()


def _cancel_swallowed() -> bool:
    """A fetch that got a message just as its task was cancelled returns the message and drops
    the cancellation (asyncio.wait_for inside nats-py, on Python 3.11); the task still counts it."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def run_history(js: JetStreamContext, channel_id: int, run_id: str) -> list[ReplyEvent]:
    """Every event of one run the stream still holds, oldest first (a throw-away consumer)."""
    sub = await js.pull_subscribe(
        reply_subject(channel_id, run_id),
        stream=REPLIES_STREAM,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=5.0,
            mem_storage=True,
        ),
    )
    events: list[ReplyEvent] = []
    try:
        while True:
            try:
                batch = await sub.fetch(100, timeout=0.5)
            except TimeoutError:
                break
            for msg in batch:
                with contextlib.suppress(ValidationError):
                    events.append(REPLY_EVENT.validate_json(msg.data))
            if not batch or batch[-1].metadata.num_pending == 0:
                break
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return events
