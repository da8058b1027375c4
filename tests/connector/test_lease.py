"""Channel leases (exclusive, fenced, self-fencing) and spreading by rendezvous hashing."""

import asyncio
from collections import Counter

import pytest
from redis.asyncio import Redis

from imgate_connector.lease import ChannelLease, ReplicaSet, place_channels


async def test_one_holder_at_a_time_and_the_fence_grows(redis_client: Redis, key_prefix: str) -> None:
    a = ChannelLease(redis_client, key_prefix, "a", ttl_s=5)
    b = ChannelLease(redis_client, key_prefix, "b", ttl_s=5)
    first = await a.acquire(1)
    assert first is not None
    assert await b.acquire(1) is None
    assert await b.holder(1) == "a"
    await b.release(1)  # not b's to release
    assert await a.holder(1) == "a"
    await a.release(1)
    second = await b.acquire(1)
    assert second is not None and second > first
    assert await a.renew_all() == [] and await b.renew_all() == []


async def test_a_lease_taken_over_is_reported_lost(redis_client: Redis, key_prefix: str) -> None:
    a = ChannelLease(redis_client, key_prefix, "a", ttl_s=0.2)
    b = ChannelLease(redis_client, key_prefix, "b", ttl_s=5)
    assert await a.acquire(7) is not None
    await asyncio.sleep(0.3)  # a missed its renewals; the lease expired
    assert await b.acquire(7) is not None
    assert await a.renew_all() == [7]
    assert a.held() == [] and await a.holder(7) == "b"


async def test_a_lease_not_renewed_in_time_is_not_trusted(redis_client: Redis, key_prefix: str) -> None:
    lease = ChannelLease(redis_client, key_prefix, "a", ttl_s=0.5)
    await lease.acquire(3)
    assert lease.valid(3)
    await asyncio.sleep(0.45)  # past 80 % of the TTL without a renewal
    assert not lease.valid(3)
    assert await lease.renew_all() == []
    assert lease.valid(3)


async def test_replicas_see_each_other_and_forget_the_dead(redis_client: Redis, key_prefix: str) -> None:
    a = ReplicaSet(redis_client, key_prefix, "a", ttl_s=0.3)
    b = ReplicaSet(redis_client, key_prefix, "b", ttl_s=5)
    await a.beat()
    assert await b.beat() == ["a", "b"]
    await asyncio.sleep(0.4)
    assert await b.beat() == ["b"]
    await b.leave()
    assert await ReplicaSet(redis_client, key_prefix, "c", ttl_s=1).beat() == ["c"]


def test_placement_spreads_evenly_and_moves_little() -> None:
    channels = list(range(1000, 1100))
    replicas = ["r1", "r2", "r3"]
    placement = place_channels(channels, replicas)
    counts = Counter(placement.values())
    assert max(counts.values()) == 34 and min(counts.values()) >= 32, counts
    assert place_channels(list(reversed(channels)), list(reversed(replicas))) == placement, "same everywhere"
    grown = place_channels(channels, [*replicas, "r4"])
    moved = [c for c in channels if placement[c] != grown[c]]
    assert Counter(grown.values())["r4"] == 25
    assert len(moved) < 50, "most channels stay where they are"


@pytest.mark.parametrize("count", [2, 6, 10])
def test_two_replicas_always_share(count: int) -> None:
    for base in range(0, 5000, 500):
        counts = Counter(place_channels(list(range(base, base + count)), ["a", "b"]).values())
        assert counts["a"] == counts["b"] == count // 2
