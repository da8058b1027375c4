"""Publishes normalized inbound messages to JetStream and waits for the bus to confirm them."""

import structlog
from nats.errors import MaxPayloadError
from nats.js import JetStreamContext

from imgate_common.bus import INBOUND_STREAM, MSG_ID_HEADER, inbound_subject
from imgate_common.messages import InboundMessage
from imgate_common.telemetry import inject, producer_span
from imgate_connector.platforms.base import InboundRejected

log = structlog.get_logger()


def dedup_id(message: InboundMessage) -> str:
    """JetStream drops a second publish with the same id; the platform's message id makes it."""
    return f"{message.platform}:{message.channel_id}:{message.message_id}"


class InboundPublisher:
    def __init__(self, js: JetStreamContext, timeout_s: float) -> None:
        self._js = js
        self._timeout = timeout_s

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
        with producer_span(INBOUND_STREAM, subject):
            try:
                ack = await self._js.publish(
                    subject,
                    payload,
                    headers=inject({MSG_ID_HEADER: dedup_id(message)}),
                    timeout=self._timeout,
                )
            except MaxPayloadError as exc:
                raise InboundRejected(f"{len(payload)} bytes, more than the bus takes") from exc
        log.info(
            "inbound_published",
            channel_id=message.channel_id,
            msg_id=message.message_id,
            kind=message.kind,
            duplicate=bool(ack.duplicate),
        )
        return bool(ack.duplicate)
