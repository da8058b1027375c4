"""Router process: consumes inbound messages, publishes run requests."""

import asyncio

import httpx
import structlog
from faststream import AckPolicy
from faststream.nats import ConsumerConfig, JStream, NatsBroker, PullSub
from faststream.nats.message import NatsMessage
from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from faststream.nats.prometheus import NatsPrometheusMiddleware
from prometheus_client import REGISTRY

from imgate_common.bus import (
    INBOUND_PARTITIONS,
    INBOUND_STREAM,
    cancel_subject,
    inbound_partition_filter,
    router_consumer,
)
from imgate_common.consume import jetstream_handler
from imgate_common.db.engine import create_engine, session_factory
from imgate_common.messages import CancelRequest, InboundMessage
from imgate_common.publish import durable_publisher
from imgate_common.runtime import connect_nats, connect_redis, service_main
from imgate_common.secrets import SecretBox
from imgate_router.service import InboundRouter
from imgate_router.settings import RouterSettings

log = structlog.get_logger()


def subscribe(broker: NatsBroker, router: InboundRouter) -> None:
    """One consumer per inbound partition, each letting one message out at a time across every
    router replica: a conversation's messages are routed in arrival order."""

    async def on_inbound(message: InboundMessage, _msg: NatsMessage) -> None:
        await router.handle(message)

    for partition in range(INBOUND_PARTITIONS):
        broker.subscriber(
            inbound_partition_filter(partition),
            stream=JStream(INBOUND_STREAM, declare=False),
            durable=router_consumer(partition),
            config=ConsumerConfig(max_ack_pending=1, ack_wait=30),
            pull_sub=PullSub(batch_size=1, timeout=1.0),
            ack_policy=AckPolicy.MANUAL,
        )(jetstream_handler(InboundMessage)(on_inbound))


async def serve(settings: RouterSettings, stop: asyncio.Event) -> None:
    nc, _js = await connect_nats(settings, "router")  # provisions streams before consumers bind
    await nc.close()
    # FastStream's middlewares continue each message's trace from its headers (and pass it on
    # in what the router publishes) and count and time the bus traffic.
    broker = NatsBroker(
        settings.nats_url,
        max_reconnect_attempts=-1,
        middlewares=(
            NatsTelemetryMiddleware(),
            NatsPrometheusMiddleware(
                registry=REGISTRY, app_name="imgate-router", metrics_prefix="imgate_bus"
            ),
        ),
    )
    redis = connect_redis(settings)
    engine = create_engine(settings.database_url)

    async def cancel(run_id: str) -> None:
        await broker.publish(CancelRequest(run_id=run_id).model_dump_json().encode(), cancel_subject(run_id))

    http = httpx.AsyncClient()
    router = InboundRouter(
        settings,
        session_factory(engine),
        redis,
        durable_publisher(broker),
        cancel,
        http,
        SecretBox.from_settings(settings),
    )
    subscribe(broker, router)
    try:
        await broker.start()
        log.info("router_started")
        await stop.wait()
    finally:
        await broker.stop()
        await http.aclose()
        await redis.aclose()
        await engine.dispose()
        log.info("router_stopped")


def main() -> None:
    service_main("router", RouterSettings(), serve)


if __name__ == "__main__":
    main()
