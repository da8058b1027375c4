"""The inbound pipeline every platform shares: read → fetch media → publish → open the card → ACK.

A platform hands each message frame over as an `InboundFrame` (how to read it, ACK it, and whom
to answer when it cannot be read). A message is ACKed only after the bus confirmed it; one that
cannot be read (or that the bus can never carry) is ACKed at once — redelivering it would fail
the same way — counted, and answered once when a person sent it. A publish that fails is not
ACKed (the platform redelivers it), and neither is a message stored after the channel's lease
ran out (its new owner gets the redelivery, the bus drops the repeat).
"""

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind
from pydantic import ValidationError

from imgate_common import telemetry
from imgate_common.messages import Attachment, InboundMessage, ReplyTarget, run_id_for
from imgate_connector.media import MediaPolicy, MediaSource, fetch_attachments
from imgate_connector.metrics import ACK_SECONDS, DEDUP_HITS, INBOUND
from imgate_connector.platforms.base import InboundRejected, PlatformAdapter
from imgate_connector.wording import wording_for

log = structlog.get_logger()

# What reading a frame raises when its payload is not a message we can take.
MALFORMED = (KeyError, ValueError, TypeError, ValidationError)

# Where an attachment of a message can be downloaded from (a short-lived URL, or a URL with the
# headers its request needs).
MediaUrl = Callable[[InboundMessage, Attachment], Awaitable[str | MediaSource]]


class InboundFrame(ABC):
    """One message frame as the platform delivered it."""

    def __init__(self, frame_id: str) -> None:
        self.frame_id = frame_id
        # The message type as a metric label: set by `read`, known types only (a sender must
        # not grow the label set).
        self.msgtype = "unknown"

    @abstractmethod
    def read(self) -> InboundMessage:
        """The normalized message; one of `MALFORMED` when the payload cannot be taken."""

    @abstractmethod
    async def ack(self, *, malformed: bool = False) -> bool:
        """Tell the platform the frame was taken; False when the connection closed first."""

    def sender(self) -> ReplyTarget | None:
        """Where to answer a frame that could not be read, if a person (not a system) sent it."""
        return None


@dataclass
class _Taken:
    """What became of one message frame (metric labels)."""

    result: str = "failed"
    acked: bool = False


class InboundPipeline:
    """Takes one channel's message frames, at most `max_frames_in_flight` at a time."""

    def __init__(self, adapter: PlatformAdapter, platform: str, media_url: MediaUrl) -> None:
        self._adapter = adapter
        self._platform = platform
        self._media_url = media_url
        self._wording = wording_for(adapter.settings.language)
        self._log = log.bind(channel_id=adapter.spec.id, platform=platform)
        self.in_flight: set[asyncio.Task[None]] = set()

    def take(self, frame: InboundFrame) -> None:
        """Begin taking a frame in the background; one beyond the limit is left un-ACKed (the
        platform redelivers it once we have caught up)."""
        if len(self.in_flight) >= self._adapter.settings.max_frames_in_flight:
            self._log.warning("frame_deferred_busy", frame_id=frame.frame_id)
            return
        task = asyncio.create_task(self._receive(frame))
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)

    async def drain(self, timeout_s: float) -> None:
        """Let the frames being published finish (and be ACKed), and those read meanwhile: a
        frame taken in is not left to the platform's redelivery when there is time."""
        deadline = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.wait(set(self.in_flight), timeout=deadline - time.monotonic())

    async def _receive(self, frame: InboundFrame) -> None:
        """One message: the root span of its trace, which every later step continues."""
        arrived = time.perf_counter()
        channel_id = self._adapter.spec.id
        attributes: dict[str, str | int] = {
            telemetry.CHANNEL_ID: channel_id,
            telemetry.PLATFORM: self._platform,
            "imgate.frame_id": frame.frame_id,
        }
        with (
            telemetry.tracer().start_as_current_span(
                f"{self._platform}.receive",
                context=Context(),  # a new trace, whatever task this runs in
                kind=SpanKind.CONSUMER,
                attributes=attributes,
                record_exception=False,
            ) as span,
            structlog.contextvars.bound_contextvars(channel_id=channel_id, frame_id=frame.frame_id),
        ):
            outcome = _Taken()
            try:
                await self._take(frame, span, outcome)
            finally:
                span.set_attribute("imgate.inbound.result", outcome.result)
                INBOUND.labels(self._platform, frame.msgtype, outcome.result).inc()
                if outcome.acked:
                    ACK_SECONDS.labels(self._platform).observe(time.perf_counter() - arrived)

    async def _take(self, frame: InboundFrame, span: Span, outcome: _Taken) -> None:
        adapter = self._adapter
        try:
            inbound = frame.read()
        except MALFORMED as exc:
            outcome.result = "malformed"
            telemetry.fail(span, exc)
            outcome.acked = await self._malformed(frame, exc)
            return
        span.set_attributes(
            {
                telemetry.MESSAGE_ID: inbound.message_id,
                telemetry.MESSAGE_TYPE: inbound.platform_type,
                telemetry.CONVERSATION_ID: inbound.target.conversation_id,
                telemetry.RUN_ID: run_id_for(inbound.platform, inbound.channel_id, inbound.message_id),
            }
        )
        telemetry.set_content(span, "imgate.message.text", inbound.text)
        structlog.contextvars.bind_contextvars(msg_id=inbound.message_id)
        inbound, media_skipped = await self._fetch_media(inbound)
        try:
            duplicate = await adapter.sink(inbound)
        except InboundRejected as exc:
            # The bus can never take it: ACK (a redelivery fails the same way) and tell the sender.
            outcome.result = "malformed"
            telemetry.fail(span, exc)
            outcome.acked = await self._malformed(frame, exc)
            return
        except Exception as exc:
            # No ACK: the platform redelivers the message later, when the bus is back.
            outcome.result = "publish_failed"
            telemetry.fail(span, exc)
            adapter.health.publish_failures += 1
            adapter.health.error(f"bus publish failed: {type(exc).__name__}: {exc}")
            self._log.error("inbound_publish_failed", msg_id=inbound.message_id, error=str(exc))
            return
        if duplicate:
            outcome.result = "duplicate"
            span.add_event("dedup_hit")
            DEDUP_HITS.labels(self._platform).inc()
        else:
            outcome.result = "published"
        adapter.health.inbound()
        if adapter.fence is not None and not adapter.fence.valid():
            # Stored, but the channel is no longer ours to act on: no card, no ACK. The platform
            # redelivers it to the channel's new owner, and the bus drops the repeat.
            outcome.result = "lease_expired"
            self._log.warning(
                "ack_withheld_lease_expired", frame_id=frame.frame_id, msg_id=inbound.message_id
            )
            return
        # Before the ACK goes out (it never waits for this): the card must be known before any
        # reply event for the message can arrive.
        adapter.accepted(inbound)
        outcome.acked = await frame.ack()
        if not outcome.acked:
            # Stored already: the redelivery is dropped as a duplicate by the bus.
            self._log.warning("ack_not_sent_connection_closed", frame_id=frame.frame_id)
        if media_skipped and not duplicate:
            await self._answer(inbound.target, self._wording.media_skipped, "media_skipped_reply_failed")

    async def _malformed(self, frame: InboundFrame, exc: Exception) -> bool:
        """ACK what can never be read (a redelivery would fail the same way), count it, and tell
        the person who sent it, when we know where they are. Whether the ACK went out."""
        health = self._adapter.health
        health.messages_malformed += 1
        health.error(f"malformed bot message: {type(exc).__name__}: {exc}")
        self._log.warning("bot_message_malformed", frame_id=frame.frame_id, error=str(exc)[:300])
        if not await frame.ack(malformed=True):
            # Not ACKed: the platform redelivers it, and that delivery tells the sender (not this one).
            self._log.warning("ack_not_sent_connection_closed", frame_id=frame.frame_id)
            return False
        target = frame.sender()
        if target is not None:
            await self._answer(target, self._wording.unreadable, "malformed_reply_failed")
        return True

    async def _answer(self, target: ReplyTarget, text: str, failed_event: str) -> None:
        """One sentence of the connector's own to the sender; a failure is only logged."""
        try:
            await self._adapter.surface.send_text(target, text)
        except Exception as exc:
            self._log.warning(failed_event, error=str(exc)[:300])

    async def _fetch_media(self, message: InboundMessage) -> tuple[InboundMessage, bool]:
        """Fetch what the channel's agent can use (media.py); whether any picture was skipped
        for a full media bucket."""
        adapter = self._adapter
        settings, resources = adapter.settings, adapter.resources
        vision = resources.vision
        policy = MediaPolicy(
            timeout_s=settings.media_timeout_s,
            inline_text_max_bytes=settings.media_inline_text_max_bytes,
            images_wanted=vision is None or await vision.supports_images(adapter.spec.default_agent_id),
        )

        async def download_url(attachment: Attachment) -> str | MediaSource:
            return await self._media_url(message, attachment)

        run_id = run_id_for(message.platform, message.channel_id, message.message_id)
        return await fetch_attachments(
            message,
            resources.media,
            resources.http,
            download_url,
            policy,
            f"{self._platform}/{adapter.spec.id}/{run_id}",
        )
