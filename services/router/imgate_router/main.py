"""Router process: consumes inbound messages, publishes run requests."""

import asyncio

import structlog
from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, PullSub
from faststream.nats.message import NatsMessage
from redis.asyncio import Redis

from imgate_common.bus import INBOUND_ALL, INBOUND_STREAM, ROUTER_CONSUMER, cancel_subject
from imgate_common.consume import jetstream_handler
from imgate_common.db.engine import create_engine, session_factory
from imgate_common.messages import CancelRequest, InboundMessage
from imgate_common.publish import durable_publisher
from imgate_common.runtime import connect_nats, service_main
from imgate_router.service import InboundRouter
from imgate_router.settings import RouterSettings

log = structlog.get_logger()


def subscribe(broker: NatsBroker, router: InboundRouter) -> None:
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
        await router.handle(message)


async def serve(settings: RouterSettings, stop: asyncio.Event) -> None:
    nc, _js = await connect_nats(settings, "router")  # provisions streams before consumers bind
    await nc.close()
    broker = NatsBroker(settings.nats_url, max_reconnect_attempts=-1)
    redis = Redis.from_url(settings.redis_url)
    engine = create_engine(settings.database_url)

    async def cancel(run_id: str) -> None:
        await broker.publish(CancelRequest(run_id=run_id).model_dump_json().encode(), cancel_subject(run_id))

    router = InboundRouter(settings, session_factory(engine), redis, durable_publisher(broker), cancel)
    subscribe(broker, router)
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
    service_main("router", RouterSettings(), serve)


if __name__ == "__main__":
    main()
