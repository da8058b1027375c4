"""One channel's reply events, from its durable consumer into its renderer."""

import asyncio

import nats.errors
import structlog
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from imgate_common.bus import REPLIES_STREAM, channel_replies, reply_consumer
from imgate_common.messages import REPLY_EVENT
from imgate_connector.rendering import CardRenderer

log = structlog.get_logger()

# Consumers of deleted channels disappear after a day without a reader.
INACTIVE_THRESHOLD_S = 24 * 3600
FETCH_BATCH = 64


async def consume_replies(js: JetStreamContext, channel_id: int, renderer: CardRenderer) -> None:
    """Runs until cancelled. The durable consumer keeps the position across owners, and starts
    at new events when first created so an old run is never replayed into a new card."""
    sub = await js.pull_subscribe(
        channel_replies(channel_id),
        durable=reply_consumer(channel_id),
        stream=REPLIES_STREAM,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.NEW,
            ack_wait=30,
            max_deliver=5,
            inactive_threshold=INACTIVE_THRESHOLD_S,
        ),
    )
    try:
        while True:
            try:
                batch = await sub.fetch(FETCH_BATCH, timeout=1)
            except TimeoutError:  # nats.errors.TimeoutError is a subclass
                continue
            except nats.errors.Error as exc:
                log.warning("reply_fetch_failed", channel_id=channel_id, error=str(exc))
                await asyncio.sleep(1)
                continue
            for msg in batch:
                try:
                    event = REPLY_EVENT.validate_json(msg.data)
                except ValidationError as exc:
                    log.error("reply_event_invalid", channel_id=channel_id, error=str(exc)[:300])
                    await msg.term()
                    continue
                try:
                    await renderer.handle(event)
                except Exception as exc:
                    log.error("reply_render_failed", run_id=event.run_id, error=str(exc))
                    await msg.nak(delay=1)
                    continue
                await msg.ack()
    finally:
        await sub.unsubscribe()
