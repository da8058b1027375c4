"""Publishes normalized inbound messages to JetStream and waits for the bus to confirm them."""

import structlog
from nats.js import JetStreamContext

from imgate_common.bus import MSG_ID_HEADER, inbound_subject
from imgate_common.messages import InboundMessage

log = structlog.get_logger()


def dedup_id(message: InboundMessage) -> str:
    """JetStream drops a second publish with the same id; the platform's message id makes it."""
    return f"{message.platform}:{message.channel_id}:{message.message_id}"


class InboundPublisher:
    def __init__(self, js: JetStreamContext, timeout_s: float) -> None:
        self._js = js
        self._timeout = timeout_s

    async def __call__(self, message: InboundMessage) -> None:
        ack = await self._js.publish(
            inbound_subject(message.platform, message.channel_id, message.target.conversation_id),
            message.model_dump_json().encode(),
            headers={MSG_ID_HEADER: dedup_id(message)},
            timeout=self._timeout,
        )
        log.info(
            "inbound_published",
            channel_id=message.channel_id,
            msg_id=message.message_id,
            kind=message.kind,
            duplicate=bool(ack.duplicate),
        )
