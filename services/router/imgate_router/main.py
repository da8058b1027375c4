"""Router process: consumes inbound messages, publishes run requests."""

import asyncio
import contextlib
import logging

import httpx
import structlog
from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, PullSub
from faststream.nats.message import NatsMessage
from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from faststream.nats.prometheus import NatsPrometheusMiddleware
from prometheus_client import REGISTRY

from imgate_common.bus import CONFIG_CHANGED, INBOUND_PARTITIONS, cancel_subject
from imgate_common.consume import DeliveryPolicy, jetstream_handler
from imgate_common.consumers import router_consumer_spec
from imgate_common.messages import CancelRequest, InboundMessage
from imgate_common.publish import Publish, durable_publisher
from imgate_common.runtime import service_lifespan, service_main
from imgate_router.service import InboundRouter, run_id_for
from imgate_router.settings import RouterSettings

log = structlog.get_logger()


def identify(message: InboundMessage) -> tuple[int | None, str | None]:
    return message.channel_id, run_id_for(message)


def _redelivered(msg: NatsMessage) -> bool:
    try:
        return (msg.raw_message.metadata.num_delivered or 1) > 1
    except Exception:  # not a JetStream message (an in-memory test broker): assume the worst
        return True


def subscribe(broker: NatsBroker, router: InboundRouter, publish: Publish) -> None:
    """One consumer per inbound partition, each letting one message out at a time across every
    router replica: a conversation's messages are routed in arrival order."""

    async def on_inbound(message: InboundMessage, msg: NatsMessage) -> None:
        await router.handle(message, redelivered=_redelivered(msg))

    for partition in range(INBOUND_PARTITIONS):
        spec = router_consumer_spec(partition)
        policy = DeliveryPolicy[InboundMessage](spec, publish, router.give_up, identify)
        broker.subscriber(
            spec.filter_subject,
            stream=JStream(spec.stream, declare=False),
            durable=spec.durable,
            config=spec.config(),
            pull_sub=PullSub(batch_size=1, timeout=1.0),
            ack_policy=AckPolicy.MANUAL,
        )(jetstream_handler(InboundMessage, policy)(on_inbound))

    # Core NATS: an administrator changed a channel, an agent or an identity.
    @broker.subscriber(CONFIG_CHANGED)
    async def on_config_changed(_body: bytes) -> None:
        router.caches.clear()


async def sweep_queues(router: InboundRouter, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await router.sweep()
        except Exception as exc:
            log.warning("queue_sweep_failed", error=str(exc))


async def serve(settings: RouterSettings, stop: asyncio.Event) -> None:
    # The partition consumers are declared (or brought to the current policy: tries, ack wait)
    # before FastStream binds them.
    consumers = [router_consumer_spec(partition) for partition in range(INBOUND_PARTITIONS)]
    async with service_lifespan(settings, "router", consumers=consumers, pre_ping=False) as runtime:
        runtime.stack.callback(log.info, "router_stopped")
        # FastStream's middlewares continue each message's trace from its headers (and pass it
        # on in what the router publishes) and count and time the bus traffic.
        broker = NatsBroker(
            settings.nats_url,
            max_reconnect_attempts=-1,
            # FastStream's own lines ("waiting for messages", a line per message received and
            # processed, its shutdown callbacks) are noise beside the router's structured log and
            # cost time per message: only its warnings and errors pass, through the root logger.
            logger=logging.getLogger("imgate.router.faststream"),
            middlewares=(
                NatsTelemetryMiddleware(),
                NatsPrometheusMiddleware(
                    registry=REGISTRY, app_name="imgate-router", metrics_prefix="imgate_bus"
                ),
            ),
        )

        async def cancel(run_id: str) -> None:
            request = CancelRequest(run_id=run_id)
            await broker.publish(request.model_dump_json().encode(), cancel_subject(run_id))

        http = await runtime.stack.enter_async_context(httpx.AsyncClient())
        publish = durable_publisher(broker)
        router = InboundRouter(
            settings,
            runtime.sessions,
            runtime.redis,
            publish,
            cancel,
            http,
            await runtime.secret_box(),
        )
        subscribe(broker, router, publish)
        runtime.stack.push_async_callback(broker.stop)
        await broker.start()
        sweeper = asyncio.create_task(sweep_queues(router, settings.queue_sweep_interval_s))
        log.info("router_started")
        try:
            await stop.wait()
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper


def main() -> None:
    service_main("router", RouterSettings(), serve)


if __name__ == "__main__":
    main()
