"""Publishes normalized inbound messages to JetStream and waits for the bus to confirm them.

A publish that fails (the bus restarting, a leader moving) is tried again for a while, well
before the platform would redeliver the un-ACKed message itself (DingTalk: about a minute):
the message is answered seconds after the bus is back, not a minute later after the user's
next messages. One conversation's messages are published one after another, in the order they
came, so a retried message never falls behind a later one.
"""

import asyncio
import time

import structlog
from nats.errors import MaxPayloadError
from nats.js import JetStreamContext
from nats.js.api import PubAck

from imgate_common.bus import INBOUND_STREAM, MSG_ID_HEADER, inbound_subject
from imgate_common.messages import InboundMessage
from imgate_common.telemetry import inject, producer_span
from imgate_connector.platforms.base import InboundRejected

log = structlog.get_logger()

# Back-off between publish attempts: doubles from the first to the last value.
RETRY_FIRST_S = 0.25
RETRY_MAX_S = 2.0


def dedup_id(message: InboundMessage) -> str:
    """JetStream drops a second publish with the same id; the platform's message id makes it."""
    return f"{message.platform}:{message.channel_id}:{message.message_id}"


def _conversation(message: InboundMessage) -> str:
    return f"{message.platform}:{message.channel_id}:{message.target.conversation_id}"


class InboundPublisher:
    def __init__(self, js: JetStreamContext, timeout_s: float, retry_for_s: float = 20.0) -> None:
        self._js = js
        self._timeout = timeout_s
        self._retry_for = retry_for_s
        # The last publish of each conversation under way: the next one waits for it.
        self._turns: dict[str, asyncio.Future[None]] = {}

    async def __call__(self, message: InboundMessage) -> bool:
        """Returns once JetStream stored it; True when it was stored before (a redelivery)."""
        try:
            subject = inbound_subject(message.platform, message.channel_id, message.target.conversation_id)
            payload = message.model_dump_json().encode()
            # Validated on both ends: what the router could not read is refused here, not lost there
            # (a lone surrogate from a cut emoji, nesting deeper than its parser goes).
            InboundMessage.model_validate_json(payload)
        except ValueError as exc:
            raise InboundRejected(f"cannot be encoded for the bus: {exc}") from exc
        key = _conversation(message)
        before = self._turns.get(key)
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._turns[key] = mine
        try:
            if before is not None:
                await asyncio.wait([before])
            ack = await self._publish(message, subject, payload)
        finally:
            mine.set_result(None)
            if self._turns.get(key) is mine:
                del self._turns[key]
        log.info(
            "inbound_published",
            channel_id=message.channel_id,
            msg_id=message.message_id,
            kind=message.kind,
            duplicate=bool(ack.duplicate),
        )
        return bool(ack.duplicate)

    async def _publish(self, message: InboundMessage, subject: str, payload: bytes) -> PubAck:
        """Publish until the bus confirms, for at most `retry_for_s`; then the last error."""
        deadline = time.monotonic() + self._retry_for
        delay = RETRY_FIRST_S
        attempt = 1
        while True:
            with producer_span(INBOUND_STREAM, subject):
                try:
                    return await self._js.publish(
                        subject,
                        payload,
                        headers=inject({MSG_ID_HEADER: dedup_id(message)}),
                        timeout=self._timeout,
                    )
                except MaxPayloadError as exc:
                    raise InboundRejected(f"{len(payload)} bytes, more than the bus takes") from exc
                except Exception as exc:
                    if time.monotonic() + delay >= deadline:
                        raise
                    log.warning(
                        "inbound_publish_retrying",
                        msg_id=message.message_id,
                        attempt=attempt,
                        error=str(exc) or type(exc).__name__,
                    )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
            attempt += 1
