"""RunConsumer against a private nats-server: work beyond the limit waits in JetStream."""

import asyncio
from typing import Any

from nats.js import JetStreamContext

from imgate_common.bus import RUNS_STREAM, run_subject
from imgate_common.consumers import RUNNER_CONSUMER
from imgate_common.messages import RunRequest
from imgate_runner.main import RunConsumer
from imgate_runner.settings import RunnerSettings
from tests.support.factories import run_request


class GatedExecutor:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.active = 0
        self.peak = 0
        self.done: list[str] = []

    async def execute(self, request: RunRequest, heartbeat: Any, attempt: int = 1) -> None:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await self.release.wait()
            self.done.append(request.run_id)
        finally:
            self.active -= 1


async def publish_runs(js: JetStreamContext, count: int) -> None:
    for _ in range(count):
        request = run_request()
        await js.publish(run_subject(1), request.model_dump_json().encode(), stream=RUNS_STREAM)


async def settle_until(check: Any) -> None:
    async with asyncio.timeout(10):
        while not await check():  # noqa: ASYNC110 (polls JetStream)
            await asyncio.sleep(0.05)


async def test_only_free_slots_take_runs_the_rest_wait_in_jetstream(js: JetStreamContext) -> None:
    executor = GatedExecutor()
    settings = RunnerSettings(max_concurrent_runs=2, ack_wait_s=30)
    consumer = RunConsumer(js, executor, settings)  # type: ignore[arg-type]
    stop = asyncio.Event()
    running = asyncio.create_task(consumer.run(stop))
    await publish_runs(js, 5)

    async def two_busy() -> bool:
        info = await js.consumer_info(RUNS_STREAM, RUNNER_CONSUMER)
        return executor.active == 2 and info.num_ack_pending == 2 and info.num_pending == 3

    await settle_until(two_busy)
    executor.release.set()

    async def all_done() -> bool:
        return len(executor.done) == 5

    await settle_until(all_done)
    assert executor.peak == 2
    stop.set()
    await running


async def test_shutdown_hands_unfinished_runs_back_at_once(js: JetStreamContext) -> None:
    executor = GatedExecutor()
    settings = RunnerSettings(max_concurrent_runs=1, ack_wait_s=30, drain_timeout_s=0.2)
    stop = asyncio.Event()
    running = asyncio.create_task(RunConsumer(js, executor, settings).run(stop))  # type: ignore[arg-type]
    await publish_runs(js, 1)

    async def busy() -> bool:
        return executor.active == 1

    await settle_until(busy)
    stop.set()
    await running

    # Another runner gets it at once, not after the 30 s ack wait.
    successor = GatedExecutor()
    successor.release.set()
    stop_successor = asyncio.Event()
    taking_over = asyncio.create_task(RunConsumer(js, successor, settings).run(stop_successor))  # type: ignore[arg-type]

    async def taken_over() -> bool:
        return len(successor.done) == 1

    async with asyncio.timeout(5):
        await settle_until(taken_over)
    stop_successor.set()
    await taking_over
