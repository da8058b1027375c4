"""Agent-runner process: consumes run requests, streams model answers back."""

import asyncio
import contextlib

import structlog
from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, PullSub
from faststream.nats.message import NatsMessage

from imgate_common.bus import RUNNER_CONSUMER, RUNS_ALL, RUNS_STREAM
from imgate_common.consume import jetstream_handler
from imgate_common.db.engine import create_engine, session_factory
from imgate_common.messages import RunRequest
from imgate_common.publish import durable_publisher
from imgate_common.runtime import connect_nats, service_main
from imgate_common.secrets import SecretBox
from imgate_runner.providers.registry import build_providers
from imgate_runner.service import RunExecutor
from imgate_runner.settings import RunnerSettings

log = structlog.get_logger()


def subscribe(broker: NatsBroker, executor: RunExecutor, max_workers: int) -> None:
    @broker.subscriber(
        RUNS_ALL,
        stream=JStream(RUNS_STREAM, declare=False),
        durable=RUNNER_CONSUMER,
        pull_sub=PullSub(batch_size=1, timeout=1.0),
        max_workers=max_workers,
        ack_policy=AckPolicy.MANUAL,
    )
    @jetstream_handler(RunRequest)
    async def on_run(request: RunRequest, msg: NatsMessage) -> None:
        await executor.execute(request, msg.in_progress)


async def serve(settings: RunnerSettings, stop: asyncio.Event) -> None:
    nc, _js = await connect_nats(settings, "agent-runner")  # provisions streams first
    await nc.close()
    broker = NatsBroker(settings.nats_url, max_reconnect_attempts=-1)
    engine = create_engine(settings.database_url)
    providers = build_providers(settings)
    async with contextlib.AsyncExitStack() as stack:
        for provider in providers.values():
            await stack.enter_async_context(provider)
        executor = RunExecutor(
            settings,
            session_factory(engine),
            SecretBox.from_settings(settings),
            providers,
            durable_publisher(broker),
        )
        subscribe(broker, executor, settings.max_concurrent_runs)
        try:
            await broker.start()
            log.info("runner_started", providers=sorted(providers))
            await stop.wait()
        finally:
            await broker.stop()
            await engine.dispose()
            log.info("runner_stopped")


def main() -> None:
    service_main("agent-runner", RunnerSettings(), serve)


if __name__ == "__main__":
    main()
