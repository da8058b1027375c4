"""Agent-runner process: consumes run requests, streams model answers back."""

import asyncio
import contextlib

import structlog
from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, PullSub
from faststream.nats.message import NatsMessage
from pydantic import BaseModel

from imgate_common.bus import RUNNER_CONSUMER, RUNS_ALL, RUNS_STREAM
from imgate_common.consume import jetstream_handler
from imgate_common.db.engine import create_engine, session_factory
from imgate_common.logs import configure_logging
from imgate_common.messages import RunRequest
from imgate_common.publish import publish_durable
from imgate_common.runtime import connect_nats, run_until_signalled
from imgate_common.secrets import SecretBox
from imgate_common.telemetry import configure_tracing
from imgate_runner.providers.registry import build_providers
from imgate_runner.service import RunExecutor
from imgate_runner.settings import RunnerSettings

log = structlog.get_logger()


class ExecutorHolder:
    """Lets the subscriber be declared before start-up has built the executor."""

    def __init__(self) -> None:
        self.executor: RunExecutor | None = None

    def get(self) -> RunExecutor:
        assert self.executor is not None, "executor used before start-up finished"
        return self.executor


def build_broker(settings: RunnerSettings, holder: ExecutorHolder) -> NatsBroker:
    broker = NatsBroker(settings.nats_url, max_reconnect_attempts=-1)

    @broker.subscriber(
        RUNS_ALL,
        stream=JStream(RUNS_STREAM, declare=False),
        durable=RUNNER_CONSUMER,
        pull_sub=PullSub(batch_size=1, timeout=1.0),
        max_workers=settings.max_concurrent_runs,
        ack_policy=AckPolicy.MANUAL,
    )
    @jetstream_handler(RunRequest)
    async def on_run(request: RunRequest, msg: NatsMessage) -> None:
        await holder.get().execute(request, msg.in_progress)

    return broker


async def serve(settings: RunnerSettings, stop: asyncio.Event) -> None:
    nc, _js = await connect_nats(settings, "agent-runner")  # provisions streams first
    await nc.close()
    holder = ExecutorHolder()
    broker = build_broker(settings, holder)
    engine = create_engine(settings.database_url)

    async def publish(subject: str, stream: str, model: BaseModel, msg_id: str) -> None:
        await publish_durable(broker, subject, stream, model, msg_id)

    providers = build_providers(settings)
    async with contextlib.AsyncExitStack() as stack:
        for provider in providers.values():
            await stack.enter_async_context(provider)
        holder.executor = RunExecutor(
            settings, session_factory(engine), SecretBox.from_settings(settings), providers, publish
        )
        try:
            await broker.start()
            log.info("runner_started", providers=sorted(providers))
            await stop.wait()
        finally:
            await broker.stop()
            await engine.dispose()
            log.info("runner_stopped")


def main() -> None:
    settings = RunnerSettings()
    configure_logging("agent-runner", settings.log_format, settings.log_level)
    configure_tracing("agent-runner")
    run_until_signalled(lambda stop: serve(settings, stop))


if __name__ == "__main__":
    main()
