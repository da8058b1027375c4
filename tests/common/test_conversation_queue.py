"""ConversationQueue against real Redis: one active run per conversation, the rest in order."""

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from imgate_common.conversation_queue import Admission, Claim, ConversationQueue
from imgate_common.messages import RunRequest
from tests.support.factories import run_request


def request(conversation: str) -> RunRequest:
    return run_request(conversation)


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


async def published_by(queue: ConversationQueue) -> tuple[list[str], Any]:
    published: list[str] = []

    async def publish(run: RunRequest) -> None:
        published.append(run.run_id)

    return published, publish


async def test_a_run_that_finished_is_never_admitted_again(queue: ConversationQueue) -> None:
    """The router published the run, the run finished, the router died before marking the
    message seen: the redelivered message must not take the conversation's lock."""
    run = request("c1")
    assert (await queue.admit(run, 5)).admission == Admission.START
    await queue.hand_over(run.run_id, "c1", (await published_by(queue))[1])
    assert (await queue.admit(run, 5)).admission == Admission.FINISHED
    assert await queue.active("c1") is None
    assert (await queue.admit(request("c1"), 5)).admission == Admission.START


async def test_a_redelivered_finished_run_cannot_claim_the_lock(queue: ConversationQueue) -> None:
    run, later = request("c1"), request("c1")
    await queue.admit(run, 5)
    assert await queue.claim("c1", run.run_id) == Claim.HELD
    await queue.hand_over(run.run_id, "c1", (await published_by(queue))[1])
    assert await queue.claim("c1", run.run_id) == Claim.FINISHED
    assert await queue.active("c1") is None
    assert (await queue.admit(later, 5)).admission == Admission.START


async def test_a_claimed_run_holds_the_lock_for_a_short_lease_its_heartbeat_renews(
    redis_client: Redis, key_prefix: str
) -> None:
    queue = ConversationQueue(redis_client, key_prefix, active_ttl_s=600, lease_ttl_s=30)
    run = request("c1")
    await queue.admit(run, 5)
    active_key = f"{key_prefix}:conv:c1:active"
    assert 30_000 < await redis_client.pttl(active_key) <= 600_000, "waiting for a runner"
    assert await queue.claim("c1", run.run_id) == Claim.HELD
    assert 0 < await redis_client.pttl(active_key) <= 30_000, "a runner's lease"
    await redis_client.pexpire(active_key, 1_000)  # most of the lease gone
    assert await queue.refresh("c1", run.run_id)
    assert await redis_client.pttl(active_key) > 1_000
    await redis_client.delete(active_key)  # the lease ran out
    assert not await queue.refresh("c1", run.run_id), "a lost lock is not silently recreated"
    assert await queue.active("c1") is None


async def test_a_run_whose_lock_was_taken_meanwhile_is_told(
    queue: ConversationQueue, redis_client: Redis
) -> None:
    first, second = request("c1"), request("c1")
    await queue.admit(first, 5)
    await redis_client.delete(f"{queue._keys('c1')[0]}")  # expired before a runner took it
    await queue.admit(second, 5)
    assert await queue.claim("c1", first.run_id) == Claim.OVERTAKEN
    assert await queue.active("c1") == second.run_id


async def test_a_run_published_before_its_advance_landed_claims_its_turn(queue: ConversationQueue) -> None:
    first, second = request("c1"), request("c1")
    await queue.admit(first, 5)
    await queue.admit(second, 5)
    assert await queue.next_after("c1", first.run_id) == second  # published; advance never ran
    assert await queue.claim("c1", second.run_id) == Claim.HELD
    assert await queue.active("c1") == second.run_id and await queue.waiting("c1") == 0


async def test_runs_waiting_behind_an_expired_lock_go_first_at_the_next_admission(
    queue: ConversationQueue, redis_client: Redis
) -> None:
    first, second, third = request("c1"), request("c1"), request("c1")
    await queue.admit(first, 5)
    await queue.admit(second, 5)
    await redis_client.delete(queue._keys("c1")[0])  # the lock expired; nobody handed over
    admitted = await queue.admit(third, 5)
    assert admitted.admission == Admission.QUEUED, "the newcomer must not jump the waiting run"
    published, publish = await published_by(queue)
    await queue.promote("c1", publish)
    assert published == [second.run_id] and await queue.active("c1") == second.run_id
    await queue.promote("c1", publish)  # a conversation with a running answer is left alone
    assert published == [second.run_id] and await queue.waiting("c1") == 1


async def test_the_sweeper_starts_runs_stranded_behind_an_expired_lock(
    queue: ConversationQueue, redis_client: Redis
) -> None:
    stranded, busy = [request("c1") for _ in range(2)], [request("c2") for _ in range(2)]
    for run in (*stranded, *busy):
        await queue.admit(run, 5)
    await redis_client.delete(queue._keys("c1")[0])
    published, publish = await published_by(queue)
    await queue.sweep(publish)
    assert published == [stranded[1].run_id]
    assert await queue.active("c1") == stranded[1].run_id and await queue.active("c2") == busy[0].run_id
    await queue.sweep(publish)
    assert published == [stranded[1].run_id]


async def test_a_run_given_up_before_it_ran_passes_its_turn_and_can_be_replayed(
    queue: ConversationQueue,
) -> None:
    first, second = request("c1"), request("c1")
    await queue.admit(first, 5)
    await queue.admit(second, 5)
    published, publish = await published_by(queue)
    await queue.release(first.run_id, "c1", publish)
    assert published == [second.run_id] and await queue.active("c1") == second.run_id
    assert (await queue.admit(first, 5)).admission == Admission.QUEUED, "a replay is admitted"


async def test_every_queue_key_expires(
    queue: ConversationQueue, redis_client: Redis, key_prefix: str
) -> None:
    runs = [request("c1") for _ in range(3)]
    for run in runs:
        await queue.admit(run, 5)
    await queue.claim("c1", runs[0].run_id)
    await queue.hand_over(runs[0].run_id, "c1", (await published_by(queue))[1])
    keys = [k async for k in redis_client.scan_iter(f"{key_prefix}:*")]
    assert len(keys) == 5  # active, queue, requests, finished, the sweeper's index
    for key in keys:
        assert await redis_client.pttl(key) > 0, key


async def test_a_waiting_run_given_up_leaves_the_queue_and_the_running_one_keeps_its_lock(
    queue: ConversationQueue,
) -> None:
    running, dropped, after = request("c1"), request("c1"), request("c1")
    for run in (running, dropped, after):
        await queue.admit(run, 5)
    published, publish = await published_by(queue)
    await queue.release(dropped.run_id, "c1", publish)
    assert published == [] and await queue.active("c1") == running.run_id
    assert await queue.waiting("c1") == 1
    await queue.hand_over(running.run_id, "c1", publish)
    assert published == [after.run_id]
