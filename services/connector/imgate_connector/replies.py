"""One channel's reply events, from its durable consumer into its renderer.

Events of different runs are handled concurrently, events of one run in order. An event is
acknowledged once the renderer is done with it (a final one: once the answer is delivered), and
kept alive meanwhile; one that fails to reach the platform (or Redis, or NATS) is redelivered
later, with back-off, for as many tries as the consumer's spec allows (about half an hour: a
platform outage). One that fails any other way (a poison event: it fails the same way every
time) gets `POISON_TRIES` tries. A final that still could not be delivered is filed as a dead
letter, counted, shown on the channel's status, and its card ends with a sentence; nothing is
dropped silently. When the channel stops here, what is in hand
goes back to JetStream at once, so the channel's next owner carries on without waiting.
"""

import asyncio
import base64
import contextlib

import httpx
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import ValidationError

from imgate_common import telemetry
from imgate_common.bus import DEAD_LETTERS_STREAM, REPLIES_STREAM, dead_letter_subject, reply_subject
from imgate_common.consume import classify
from imgate_common.consumers import (
    REPLY_IN_HAND,
    ConsumerSpec,
    ensure_consumer,
    reply_consumer_spec,
    run_history_config,
)
from imgate_common.errors import PlatformError
from imgate_common.messages import REPLY_EVENT, TERMINAL_KINDS, DeadLetter, ReplyEvent, RunCompleted, RunDelta
from imgate_common.publish import Publish, jetstream_publisher
from imgate_common.status import ChannelStatusStore
from imgate_connector.lease import LeaseExpired
from imgate_connector.rendering import CardRenderer

log = structlog.get_logger()

# An idle channel asks for new events this often (one long-poll request at a time).
POLL_S = 5.0
# Events in hand at once per channel; JetStream holds back the rest.
MAX_IN_FLIGHT = REPLY_IN_HAND
# Runs idle this long are forgotten by the renderer (checked this often).
SWEEP_EVERY_S = 60.0
# Tries of an event that fails otherwise than by not reaching something (a bug, a payload the
# renderer cannot show): a few, in case it was a race, then it ends like a final nobody could
# deliver, in a minute rather than after the half hour a platform outage is given.
POISON_TRIES = 3


class PoisonedForChaos(Exception):
    """The chaos scenario's poison event (`CONNECTOR_CHAOS_POISON_REPLY_MARK`)."""


class ReplyConsumer:
    def __init__(
        self,
        js: JetStreamContext,
        channel_id: int,
        renderer: CardRenderer,
        *,
        ack_wait_s: float = 10.0,
        forget_idle_s: float = 3600.0,
        spec: ConsumerSpec | None = None,
        status: ChannelStatusStore | None = None,
        dead_letters: Publish | None = None,
        poison_mark: str = "",
    ) -> None:
        self._js = js
        self._channel_id = channel_id
        self._renderer = renderer
        self._ack_wait = ack_wait_s
        self._forget_idle = forget_idle_s
        self._spec = spec or reply_consumer_spec(channel_id, ack_wait_s)
        self._status = status
        self._dead_letters = dead_letters or jetstream_publisher(js)
        self._poison_mark = poison_mark
        self._chains: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._log = log.bind(channel_id=channel_id)

    async def run(self) -> None:
        """Runs until cancelled. The durable consumer keeps the position across owners, and starts
        at new events when first created so an old run is never replayed into a new card."""
        config = self._spec.config()
        try:
            # Creates the consumer, or brings an existing one's settings up to date.
            await ensure_consumer(self._js, self._spec)
        except Exception as exc:  # an older consumer that cannot change: use it as it is
            self._log.warning("reply_consumer_not_updated", error=str(exc))
        sub = await self._js.pull_subscribe(
            self._spec.filter_subject, durable=self._spec.durable, stream=self._spec.stream, config=config
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
        deliveries = _deliveries(msg)
        try:
            if before is not None:
                await asyncio.wait([before])  # the run's earlier events first
            if deliveries > self._spec.max_tries:
                # Delivered again after its last try without an outcome (that try stopped the
                # process, or filing the dead letter failed): file it now.
                await self._give_up(msg, event, deliveries, f"no outcome after {self._spec.max_tries} tries")
                return
            keep_alive = asyncio.create_task(self._keep_alive(msg))
            with self._span(msg, event), structlog.contextvars.bound_contextvars(run_id=event.run_id):
                if self._poison_mark and isinstance(event, RunCompleted) and self._poison_mark in event.text:
                    raise PoisonedForChaos(f"a final containing {self._poison_mark!r} (chaos)")
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
            passing = may_pass(exc)
            self._log.exception(
                "reply_render_failed", run_id=event.run_id, kind=event.kind, error=str(exc), passing=passing
            )
            if deliveries < (self._spec.max_tries if passing else min(POISON_TRIES, self._spec.max_tries)):
                with contextlib.suppress(Exception):
                    await msg.nak(delay=self._spec.retry_delay(deliveries))
                return
            reason = f"{type(exc).__name__}: {exc}"
            await self._give_up(msg, event, deliveries, reason, type(exc).__name__, permanent=not passing)
            return
        finally:
            if keep_alive is not None:
                keep_alive.cancel()
        try:
            await msg.ack()
        except Exception as exc:  # redelivered later; the renderer knows it answered
            self._log.warning("reply_ack_failed", run_id=event.run_id, error=str(exc))

    async def _give_up(
        self,
        msg: Msg,
        event: ReplyEvent,
        deliveries: int,
        reason: str,
        error_type: str = "",
        *,
        permanent: bool = False,
    ) -> None:
        """The last try failed. A final answer is filed as a dead letter, reported and its card
        ended; any other event only ends. If filing fails while deliveries remain, the event
        comes back and filing is tried again."""
        reason = " ".join(reason.split())[:500]
        if event.kind in TERMINAL_KINDS:
            try:
                await self._file(msg, event, deliveries, reason, error_type, permanent)
            except Exception as exc:
                if deliveries < self._spec.max_deliver:
                    self._log.warning("dead_letter_retry", run_id=event.run_id, error=str(exc)[:300])
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=self._spec.retry_delay(deliveries))
                    return
                self._log.exception("dead_letter_failed", run_id=event.run_id)
            await self._renderer.undeliverable(event, reason)
            if self._status is not None:
                with contextlib.suppress(Exception):
                    text = f"answer to run {event.run_id} undeliverable: {reason}"
                    await self._status.record_error(self._channel_id, "connector", text)
        else:
            self._log.error("reply_event_dropped", run_id=event.run_id, kind=event.kind, reason=reason)
        with contextlib.suppress(Exception):
            await msg.term()

    async def _file(
        self, msg: Msg, event: ReplyEvent, deliveries: int, reason: str, error_type: str, permanent: bool
    ) -> None:
        seq = msg.metadata.sequence.stream
        letter = DeadLetter(
            consumer=self._spec.durable,
            stream=REPLIES_STREAM,
            subject=msg.subject,
            stream_seq=seq,
            headers=dict(msg.headers or {}),
            data_b64=base64.b64encode(msg.data).decode(),
            reason=reason,
            error_type=error_type,
            permanent=permanent,  # a poison event; False: the platform stayed out of reach
            deliveries=deliveries,
            channel_id=event.channel_id,
            run_id=event.run_id,
        )
        subject = dead_letter_subject(self._spec.durable)
        await self._dead_letters(subject, DEAD_LETTERS_STREAM, letter, f"dead:{REPLIES_STREAM}:{seq}")

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


def may_pass(exc: BaseException) -> bool:
    """Whether a failure may pass with time: the platform (or Redis, NATS, the lease) out of
    reach or refusing for now. Anything else fails the same way on every try."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, PlatformError | httpx.HTTPError | LeaseExpired):
            return True
        current = current.__cause__
    return not classify(exc).permanent


def _deliveries(msg: Msg) -> int:
    try:
        return msg.metadata.num_delivered or 1
    except Exception:  # not a JetStream message: its first delivery
        return 1


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
        config=run_history_config(),
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
