"""Router process: consumes inbound messages, publishes run requests."""

import asyncio

import structlog
from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, PullSub
from faststream.nats.message import NatsMessage
from pydantic import BaseModel
from redis.asyncio import Redis

from imgate_common.bus import INBOUND_ALL, INBOUND_STREAM, ROUTER_CONSUMER
from imgate_common.consume import jetstream_handler
from imgate_common.db.engine import create_engine, session_factory
from imgate_common.logs import configure_logging
from imgate_common.messages import InboundMessage
from imgate_common.publish import publish_durable
from imgate_common.runtime import connect_nats, run_until_signalled
from imgate_common.telemetry import configure_tracing
from imgate_router.service import InboundRouter
from imgate_router.settings import RouterSettings

log = structlog.get_logger()


def build_broker(settings: RouterSettings, router: "RouterHolder") -> NatsBroker:
    broker = NatsBroker(settings.nats_url, max_reconnect_attempts=-1)

    @broker.subscriber(
        INBOUND_ALL,
        stream=JStream(INBOUND_STREAM, declare=False),
        durable=ROUTER_CONSUMER,
        # One at a time keeps arrival order; FastStream handles a fetched batch concurrently.
        pull_sub=PullSub(batch_size=1, timeout=1.0),
        ack_policy=AckPolicy.MANUAL,
    )
    @jetstream_handler(InboundMessage)
    async def on_inbound(message: InboundMessage, _msg: NatsMessage) -> None:
        await router.get().handle(message)

    return broker


class RouterHolder:
    """Lets the subscriber be declared before the lifespan has built the router."""

    def __init__(self) -> None:
        self.router: InboundRouter | None = None

    def get(self) -> InboundRouter:
        assert self.router is not None, "router used before start-up finished"
        return self.router


async def serve(settings: RouterSettings, stop: asyncio.Event) -> None:
    nc, _js = await connect_nats(settings, "router")  # provisions streams before consumers bind
    await nc.close()
    holder = RouterHolder()
    broker = build_broker(settings, holder)
    redis = Redis.from_url(settings.redis_url)
    engine = create_engine(settings.database_url)

    async def publish(subject: str, stream: str, model: BaseModel, msg_id: str) -> None:
        await publish_durable(broker, subject, stream, model, msg_id)

    holder.router = InboundRouter(settings, session_factory(engine), redis, publish)
    try:
        await broker.start()
        log.info("router_started")
        await stop.wait()
    finally:
        await broker.stop()
        await redis.aclose()
        await engine.dispose()
        log.info("router_stopped")


def main() -> None:
    settings = RouterSettings()
    configure_logging("router", settings.log_format, settings.log_level)
    configure_tracing("router")
    run_until_signalled(lambda stop: serve(settings, stop))


if __name__ == "__main__":
    main()
