"""ConversationQueue against real Redis: one active run per conversation, the rest in order."""

import asyncio
import uuid

import pytest
from redis.asyncio import Redis

from imgate_common.conversation_queue import Admission, ConversationQueue
from imgate_common.messages import RunRequest
from tests.support.factories import reply_target


def request(conversation: str, run_id: str | None = None) -> RunRequest:
    return RunRequest(
        run_id=run_id or str(uuid.uuid4()),
        channel_id=1,
        conversation_id=conversation,
        agent_id=1,
        user_id=1,
        user_message_id=1,
        text="hi",
        target=reply_target(),
    )


@pytest.fixture
def queue(redis_client: Redis, key_prefix: str) -> ConversationQueue:
    return ConversationQueue(redis_client, key_prefix, active_ttl_s=60)


async def test_first_run_starts_later_ones_wait_in_order_and_admission_is_idempotent(
    queue: ConversationQueue,
) -> None:
    a, b, c = (request("c1") for _ in range(3))
    assert (await queue.admit(a, 5)).admission == Admission.START
    assert await queue.admit(b, 5) == await queue.admit(b, 5)
    assert (await queue.admit(b, 5)).position == 1
    assert (await queue.admit(c, 5)).position == 2
    assert (await queue.admit(a, 5)).admission == Admission.START, "a redelivered active run"
    assert (await queue.admit(request("other"), 5)).admission == Admission.START
    assert await queue.waiting("c1") == 2


async def test_beyond_the_depth_the_queue_is_full(queue: ConversationQueue) -> None:
    await queue.admit(request("c1"), 1)
    await queue.admit(request("c1"), 1)
    assert (await queue.admit(request("c1"), 1)).admission == Admission.FULL


async def test_hand_over_publishes_each_next_run_once_in_order(queue: ConversationQueue) -> None:
    runs = [request("c1") for _ in range(3)]
    for run in runs:
        await queue.admit(run, 5)
    published: list[str] = []

    async def publish(run: RunRequest) -> None:
        published.append(run.run_id)

    await queue.hand_over(runs[0].run_id, "c1", publish)
    assert published == [runs[1].run_id] and await queue.active("c1") == runs[1].run_id
    await queue.hand_over(runs[0].run_id, "c1", publish)  # a repeated finish changes nothing
    assert published == [runs[1].run_id]
    await queue.hand_over(runs[1].run_id, "c1", publish)
    await queue.hand_over(runs[2].run_id, "c1", publish)
    assert published == [runs[1].run_id, runs[2].run_id]
    assert await queue.active("c1") is None and await queue.waiting("c1") == 0
    assert (await queue.admit(request("c1"), 5)).admission == Admission.START


async def test_a_run_queued_while_the_active_one_finishes_is_not_stranded(queue: ConversationQueue) -> None:
    first, late = request("c1"), request("c1")
    await queue.admit(first, 5)
    assert await queue.next_after("c1", first.run_id) is None
    await queue.admit(late, 5)  # arrives between the look and the advance
    assert not await queue.advance("c1", first.run_id, None)
    published: list[str] = []

    async def publish(run: RunRequest) -> None:
        published.append(run.run_id)

    await queue.hand_over(first.run_id, "c1", publish)
    assert published == [late.run_id] and await queue.active("c1") == late.run_id


async def test_concurrent_admissions_from_two_routers_get_distinct_positions(
    queue: ConversationQueue,
) -> None:
    runs = [request("c1") for _ in range(20)]
    results = await asyncio.gather(*(queue.admit(r, 50) for r in runs))
    starts = [r for r in results if r.admission == Admission.START]
    positions = sorted(r.position for r in results if r.admission == Admission.QUEUED)
    assert len(starts) == 1 and positions == list(range(1, 20))
