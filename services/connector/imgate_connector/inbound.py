"""Publishes normalized inbound messages to JetStream and waits for the bus to confirm them.

A publish the bus does not confirm (NATS restarting, a stream without its leader for a moment)
is tried again with back-off until `retry_for_s` after the message came, well before the
platform would redeliver the un-ACKed message itself (DingTalk: about a minute). Three rules
keep that bounded and in order:

- One publish per message at a time: a frame of a message whose publish is under way (the
  platform redelivered it meanwhile) waits for that publish and shares its outcome, instead
  of piling another publish up behind it.
- One conversation's messages are published one after another, in the order they came: a
  message waits until the earlier ones of its conversation are stored or given up on, so a
  retried message is never overtaken by the user's next one.
- Nothing retries or waits past its message's deadline, and at most `max_waiting` messages of
  one conversation are under way; a further one is refused (not ACKed, the platform
  redelivers it).
"""

import asyncio
import time
from collections import Counter

import structlog
from nats.errors import ConnectionClosedError, MaxPayloadError
from nats.js import JetStreamContext

from imgate_common.bus import INBOUND_STREAM, MSG_ID_HEADER, inbound_subject
from imgate_common.messages import InboundMessage
from imgate_common.telemetry import inject, producer_span
from imgate_connector.platforms.base import InboundRejected

log = structlog.get_logger()

# Back-off between attempts: doubles from the first value up to the last.
RETRY_FIRST_S = 0.25
RETRY_MAX_S = 2.0
# A retry gets at least this long to be confirmed, however close its deadline is.
MIN_ATTEMPT_S = 0.5
# On top of the request's own timeout: nats-py can wait on its flusher before the request's
# timer starts, and an attempt must end on time whatever the client does.
ATTEMPT_GRACE_S = 1.0


def dedup_id(message: InboundMessage) -> str:
    """JetStream drops a second publish with the same id; the platform's message id makes it."""
    return f"{message.platform}:{message.channel_id}:{message.message_id}"


def conversation_key(message: InboundMessage) -> str:
    return f"{message.platform}:{message.channel_id}:{message.target.conversation_id}"


class ConversationBusy(Exception):
    """Too many of one conversation's messages are already waiting for the bus."""


class InboundPublisher:
    def __init__(
        self,
        js: JetStreamContext,
        timeout_s: float,
        retry_for_s: float = 0.0,
        max_waiting: int = 16,
    ) -> None:
        self._js = js
        self._timeout = timeout_s
        self._retry_for = retry_for_s
        self._max_waiting = max_waiting
        self._publishing: dict[str, asyncio.Task[bool]] = {}  # by dedup id
        self._last: dict[str, asyncio.Task[bool]] = {}  # each conversation's latest publish
        self._waiting: Counter[str] = Counter()  # publishes under way per conversation

    async def __call__(self, message: InboundMessage) -> bool:
        """Returns once JetStream stored it; True when it was stored before (a redelivery)."""
        key = dedup_id(message)
        running = self._publishing.get(key)
        if running is not None:
            # A redelivered frame of a message being published: it rides on that publish.
            log.info("inbound_publish_joined", channel_id=message.channel_id, msg_id=message.message_id)
            await asyncio.shield(running)
            return True
        subject, payload = _encode(message)
        conversation = conversation_key(message)
        if self._waiting[conversation] >= self._max_waiting:
            raise ConversationBusy(
                f"{self._waiting[conversation]} messages of the conversation wait for the bus"
            )
        deadline = time.monotonic() + self._retry_for
        task = asyncio.create_task(
            self._publish(message, subject, payload, self._last.get(conversation), deadline),
            name=f"inbound-publish-{key}",
        )
        self._publishing[key] = task
        self._last[conversation] = task
        self._waiting[conversation] += 1

        def done(finished: asyncio.Task[bool]) -> None:
            if self._publishing.get(key) is finished:
                del self._publishing[key]
            if self._last.get(conversation) is finished:
                del self._last[conversation]
            self._waiting[conversation] -= 1
            if self._waiting[conversation] <= 0:
                del self._waiting[conversation]
            if not finished.cancelled():
                finished.exception()  # retrieved: every frame that waited for it may be gone

        task.add_done_callback(done)
        # Shielded: one frame given up on (its connection closed) stops no other frame's wait.
        duplicate = await asyncio.shield(task)
        log.info(
            "inbound_published",
            channel_id=message.channel_id,
            msg_id=message.message_id,
            kind=message.kind,
            duplicate=duplicate,
        )
        return duplicate

    def under_way(self) -> int:
        """Publishes not yet ended (waiting for an earlier message, or being tried)."""
        return len(self._publishing)

    async def close(self) -> None:
        """Stop what is still being tried (the process is stopping; the platform redelivers)."""
        tasks = list(self._publishing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _publish(
        self,
        message: InboundMessage,
        subject: str,
        payload: bytes,
        before: asyncio.Task[bool] | None,
        deadline: float,
    ) -> bool:
        if before is not None and not before.done():
            # The conversation's earlier message first, stored or given up on; its outcome is
            # its own frames' business. It came earlier, so its deadline comes first too.
            await asyncio.wait([before], timeout=max(deadline - time.monotonic(), MIN_ATTEMPT_S))
        delay = RETRY_FIRST_S
        attempt = 1
        while True:
            # The first attempt gets the full timeout; retries only what is left of the window.
            remaining = deadline - time.monotonic()
            timeout = self._timeout if attempt == 1 else max(min(self._timeout, remaining), MIN_ATTEMPT_S)
            try:
                with producer_span(INBOUND_STREAM, subject):
                    async with asyncio.timeout(timeout + ATTEMPT_GRACE_S):
                        ack = await self._js.publish(
                            subject,
                            payload,
                            headers=inject({MSG_ID_HEADER: dedup_id(message)}),
                            timeout=timeout,
                        )
                return bool(ack.duplicate)
            except MaxPayloadError as exc:
                raise InboundRejected(f"{len(payload)} bytes, more than the bus takes") from exc
            except ConnectionClosedError:
                raise  # closed for good (the process is stopping): nothing to wait for
            except Exception as exc:
                if time.monotonic() + delay >= deadline:
                    raise
                log.warning(
                    "inbound_publish_retrying",
                    channel_id=message.channel_id,
                    msg_id=message.message_id,
                    attempt=attempt,
                    error=str(exc) or type(exc).__name__,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
            attempt += 1


def _encode(message: InboundMessage) -> tuple[str, bytes]:
    try:
        subject = inbound_subject(message.platform, message.channel_id, message.target.conversation_id)
        payload = message.model_dump_json().encode()
        # Validated on both ends: what the router could not read is refused here, not lost there
        # (a lone surrogate from a cut emoji, nesting deeper than its parser goes).
        InboundMessage.model_validate_json(payload)
    except ValueError as exc:
        raise InboundRejected(f"cannot be encoded for the bus: {exc}") from exc
    return subject, payload
