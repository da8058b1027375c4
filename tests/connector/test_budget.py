"""CardBudget: one token bucket per app in Redis, shared by every replica."""

import asyncio
import time

from redis.asyncio import Redis

from imgate_connector.budget import CardBudget


async def test_calls_that_must_happen_wait_for_the_rate(redis_client: Redis, key_prefix: str) -> None:
    budget = CardBudget(redis_client, key_prefix, "app", rate=50)
    started = time.monotonic()
    for _ in range(75):  # a burst of 50, then 25 at 50/s
        await budget.take()
    took = time.monotonic() - started
    assert 0.4 <= took < 1.5, took


async def test_replicas_share_one_bucket(redis_client: Redis, key_prefix: str) -> None:
    a = CardBudget(redis_client, key_prefix, "app", rate=20)
    b = CardBudget(redis_client, key_prefix, "app", rate=20)
    granted = [await (a if i % 2 else b).try_take() for i in range(40)]
    # 20 in the bucket, a quarter of it kept for calls that must happen
    assert 14 <= sum(granted) <= 16
    other = CardBudget(redis_client, key_prefix, "other-app", rate=20)
    assert await other.try_take(), "each app has its own bucket"


async def test_optional_calls_leave_a_reserve_for_finals(redis_client: Redis, key_prefix: str) -> None:
    budget = CardBudget(redis_client, key_prefix, "app", rate=8)
    while await budget.try_take():
        pass
    started = time.monotonic()
    await budget.take()
    await budget.take()
    assert time.monotonic() - started < 0.1, "the reserve serves the final at once"


async def test_throttling_halves_the_rate_and_it_recovers(redis_client: Redis, key_prefix: str) -> None:
    budget = CardBudget(redis_client, key_prefix, "app", rate=40)
    assert await budget.penalize() == 20
    assert await budget.penalize() == 10
    assert not await budget.try_take(), "the bucket starts empty after throttling"
    started = time.monotonic()
    for _ in range(5):
        await budget.take()
    assert time.monotonic() - started >= 0.3, "at about 10/s now"
    await asyncio.sleep(0.5)
    fields = await redis_client.hgetall(f"{key_prefix}:card-budget:app")
    assert 10 < float(fields[b"rate"]) < 40
