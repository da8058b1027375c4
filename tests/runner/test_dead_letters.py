"""Runs that cannot succeed, against a private nats-server and real Redis: a bounded number of
tries, then a dead letter, a failure sentence on the user's card, the error on the channel's
status, a metric, and the conversation handed to its next message."""

import asyncio
import base64
from typing import Any

from nats.js import JetStreamContext
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from imgate_common.bus import DEAD_LETTERS_STREAM, REPLIES_STREAM, RUNS_STREAM, run_subject
from imgate_common.consume import DeliveryPolicy, settle
from imgate_common.consumers import RUNNER_CONSUMER, ConsumerSpec, ensure_consumer
from imgate_common.conversation_queue import ConversationQueue
from imgate_common.errors import ConfigurationError, FailureCategory
from imgate_common.messages import REPLY_EVENT, DeadLetter, RunFailed, RunRequest
from imgate_common.publish import jetstream_publisher
from imgate_common.status import ChannelStatusStore
from imgate_common.wording import failure_sentence
from imgate_runner.main import RunConsumer
from imgate_runner.service import RunExecutor
from imgate_runner.settings import RunnerSettings
from tests.support.factories import run_request


class FailingExecutor(RunExecutor):
    """Fails the runs it is told to, with the error it is given; answers the others. Giving
    up is the real executor's."""

    def __init__(self, js: JetStreamContext, failing: dict[str, Exception]) -> None:
        super().__init__(RunnerSettings(), None, None, {}, jetstream_publisher(js))  # type: ignore[arg-type]
        self.failing = failing
        self.tries: dict[str, int] = {}
        self.done: list[str] = []

    async def execute(self, request: RunRequest, heartbeat: Any, attempt: int = 1) -> None:
        self.tries[request.run_id] = self.tries.get(request.run_id, 0) + 1
        error = self.failing.get(request.run_id)
        if error is not None:
            raise error
        self.done.append(request.run_id)


def run(conversation: str) -> RunRequest:
    return run_request(conversation, channel_id=7)


async def eventually(check: Any) -> None:
    async with asyncio.timeout(15):
        while not await check():  # noqa: ASYNC110 (polls JetStream)
            await asyncio.sleep(0.05)


async def stream_messages(js: JetStreamContext, stream: str) -> list[bytes]:
    info = await js.stream_info(stream)
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        if info.state.messages == 0:
            break
        found.append((await js.get_msg(stream, seq)).data or b"")
    return found


async def consume(
    js: JetStreamContext, executor: FailingExecutor, queue: ConversationQueue, status: ChannelStatusStore,
    spec: ConsumerSpec | None = None,
) -> tuple[asyncio.Event, asyncio.Task[None]]:  # fmt: skip
    stop = asyncio.Event()
    consumer = RunConsumer(js, executor, RunnerSettings(ack_wait_s=30), queue, status, spec)
    return stop, asyncio.create_task(consumer.run(stop))


async def test_a_run_that_can_never_succeed_is_dead_lettered_at_once_and_the_next_one_runs(
    js: JetStreamContext, redis_client: Redis, key_prefix: str
) -> None:
    """An agent key the configured secret keys cannot read: no retry can help."""
    queue = ConversationQueue(redis_client, key_prefix, active_ttl_s=60)
    status = ChannelStatusStore(redis_client, key_prefix)
    poison, following = run("c1"), run("c1")
    await queue.admit(poison, 5)
    await queue.admit(following, 5)
    executor = FailingExecutor(
        js, {poison.run_id: ConfigurationError("agent 1: its API key cannot be decrypted")}
    )
    before = (
        REGISTRY.get_sample_value(
            "imgate_dead_letters_total",
            {"consumer": RUNNER_CONSUMER, "category": "misconfigured", "permanent": "true"},
        )
        or 0.0
    )
    await js.publish(run_subject(7), poison.model_dump_json().encode(), stream=RUNS_STREAM)
    stop, running = await consume(js, executor, queue, status)

    async def next_one_answered() -> bool:
        return executor.done == [following.run_id]

    await eventually(next_one_answered)
    stop.set()
    await running
    assert executor.tries[poison.run_id] == 1, "not retried"
    [raw] = await stream_messages(js, DEAD_LETTERS_STREAM)
    letter = DeadLetter.model_validate_json(raw)
    assert (letter.consumer, letter.stream, letter.subject) == (RUNNER_CONSUMER, RUNS_STREAM, run_subject(7))
    assert letter.permanent and letter.category == FailureCategory.MISCONFIGURED
    assert letter.run_id == poison.run_id and letter.channel_id == 7
    assert RunRequest.model_validate_json(base64.b64decode(letter.data_b64)) == poison
    assert "cannot be decrypted" in letter.reason
    failed = [e for e in map(REPLY_EVENT.validate_json, await stream_messages(js, REPLIES_STREAM))]
    assert [(e.run_id, e.kind) for e in failed] == [(poison.run_id, "failed")]
    assert isinstance(failed[0], RunFailed)
    assert failed[0].text == failure_sentence(FailureCategory.MISCONFIGURED, "zh-CN")
    shown = await status.read(7, enabled=True)
    assert shown.last_error == "agent-runner: configuration: agent 1: its API key cannot be decrypted"
    after = REGISTRY.get_sample_value(
        "imgate_dead_letters_total",
        {"consumer": RUNNER_CONSUMER, "category": "misconfigured", "permanent": "true"},
    )
    assert after == before + 1


async def test_a_run_whose_dependency_stays_down_is_retried_with_back_off_then_dead_lettered(
    js: JetStreamContext, redis_client: Redis, key_prefix: str
) -> None:
    queue = ConversationQueue(redis_client, key_prefix, active_ttl_s=60)
    status = ChannelStatusStore(redis_client, key_prefix)
    down = run("c2")
    await queue.admit(down, 5)
    executor = FailingExecutor(js, {down.run_id: ConnectionRefusedError("database unreachable")})
    spec = ConsumerSpec(
        durable=RUNNER_CONSUMER,
        stream=RUNS_STREAM,
        filter_subject="agent.run.>",
        ack_wait_s=30,
        max_tries=3,
        backoff_s=(0.05, 0.1),
    )
    await js.publish(run_subject(7), down.model_dump_json().encode(), stream=RUNS_STREAM)
    stop, running = await consume(js, executor, queue, status, spec)

    async def dead_lettered() -> bool:
        return (await js.stream_info(DEAD_LETTERS_STREAM)).state.messages == 1

    await eventually(dead_lettered)
    stop.set()
    await running
    assert executor.tries[down.run_id] == 3
    [raw] = await stream_messages(js, DEAD_LETTERS_STREAM)
    letter = DeadLetter.model_validate_json(raw)
    assert not letter.permanent and letter.deliveries == 3 and letter.error_type == "ConnectionRefusedError"
    assert await queue.active("c2") is None, "the conversation is free again"
    info = await js.consumer_info(RUNS_STREAM, RUNNER_CONSUMER)
    assert info.config.max_deliver == 5 and info.num_ack_pending == 0 and info.num_pending == 0


async def test_a_run_whose_last_try_never_ended_is_filed_without_another_try(js: JetStreamContext) -> None:
    """The try crashed its process (no ack, no nak): the delivery after the last try only files
    the dead letter, so a message that kills whoever takes it cannot do so forever."""
    spec = ConsumerSpec(
        durable="crashy",
        stream=RUNS_STREAM,
        filter_subject="agent.run.>",
        ack_wait_s=1,
        max_tries=1,
        backoff_s=(0.05,),
    )
    await ensure_consumer(js, spec)
    killer = run("c3")
    await js.publish(run_subject(7), killer.model_dump_json().encode(), stream=RUNS_STREAM)
    sub = await js.pull_subscribe_bind(durable=spec.durable, stream=spec.stream)
    [first] = await sub.fetch(1, timeout=5)
    assert first.metadata.num_delivered == 1  # taken, then the process "died": never settled
    [again] = await sub.fetch(1, timeout=10)  # redelivered after the ack wait
    handled: list[RunRequest] = []

    async def handle(request: RunRequest) -> None:
        handled.append(request)

    await settle(RunRequest, again, handle, DeliveryPolicy(spec, jetstream_publisher(js)))
    assert handled == []
    [raw] = await stream_messages(js, DEAD_LETTERS_STREAM)
    letter = DeadLetter.model_validate_json(raw)
    assert letter.reason == "no outcome after 1 tries (the process handling it stopped)"
    assert letter.deliveries == 2 and not letter.permanent and letter.run_id is None
    info = await js.consumer_info(RUNS_STREAM, spec.durable)
    assert info.num_ack_pending == 0 and info.num_redelivered == 0


async def test_a_taken_run_holds_its_conversations_lock_as_a_lease_its_heartbeat_renews(
    js: JetStreamContext, redis_client: Redis, key_prefix: str
) -> None:
    queue = ConversationQueue(redis_client, key_prefix, active_ttl_s=600, lease_ttl_s=30)
    taken = run("c4")
    await queue.admit(taken, 5)
    active = f"{key_prefix}:conv:c4:active"
    seen: list[int] = []

    class Beating(FailingExecutor):
        async def execute(self, request: RunRequest, heartbeat: Any, attempt: int = 1) -> None:
            seen.append(await redis_client.pttl(active))
            await redis_client.pexpire(active, 1_000)  # most of the lease gone
            await heartbeat()
            seen.append(await redis_client.pttl(active))
            await super().execute(request, heartbeat, attempt)

    executor = Beating(js, {})
    await js.publish(run_subject(7), taken.model_dump_json().encode(), stream=RUNS_STREAM)
    stop, running = await consume(js, executor, queue, ChannelStatusStore(redis_client, key_prefix))

    async def answered() -> bool:
        return executor.done == [taken.run_id]

    await eventually(answered)
    stop.set()
    await running
    claimed, renewed = seen
    assert 1_000 < claimed <= 30_000, "a runner's lease, not the admission's ten minutes"
    assert renewed > 1_000, "renewed by the heartbeat"
    assert await queue.active("c4") is None, "released when the run ended"
