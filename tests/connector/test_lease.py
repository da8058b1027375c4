"""Channel leases (exclusive, fenced, self-fencing) and spreading by rendezvous hashing."""

import asyncio
from collections import Counter

import pytest
from redis.asyncio import Redis

from imgate_connector.lease import SELF_FENCE_SHARE, ChannelLease, LeaseExpired, ReplicaSet, place_channels
from imgate_connector.ledger import ReplyLedger, ReplyState
from tests.connector.sim import until
from tests.support.blackhole import black_hole_proxy


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


async def test_a_black_holed_redis_cannot_keep_a_replica_acting_past_its_lease(
    redis_client: Redis, key_prefix: str
) -> None:
    async with black_hole_proxy("127.0.0.1", 6379) as proxy:
        through = Redis(host="127.0.0.1", port=proxy.port)
        lease = ChannelLease(through, key_prefix, "a", ttl_s=2.0)
        try:
            assert await lease.acquire(5) is not None
            fence = lease.fenced(5)
            assert fence.valid()
            proxy.cut = True  # Redis stops answering, and says nothing
            margin = lease.ttl_s * (1 - SELF_FENCE_SHARE)
            renewal = asyncio.create_task(lease.renew_all())
            done, _ = await asyncio.wait([renewal], timeout=margin)
            assert renewal in done, "a Redis call under a lease gives up inside the lease's margin"
            assert isinstance(renewal.exception(), TimeoutError)

            async def expired() -> bool:
                return not fence.valid()

            await until(expired)
            # The local deadline passed while the lease still holds in Redis: nobody else could
            # have taken the channel before this replica stopped acting on it.
            assert await redis_client.pttl(f"{key_prefix}:lease:5") > 0
            with pytest.raises(LeaseExpired):
                fence.check()
        finally:
            await through.aclose(close_connection_pool=True)


async def test_the_ledger_refuses_a_write_from_a_stale_fence(redis_client: Redis, key_prefix: str) -> None:
    old = ChannelLease(redis_client, key_prefix, "old", ttl_s=5)
    assert await old.acquire(9) is not None
    stale = ReplyLedger(redis_client, key_prefix, old.fenced(9))
    await stale.set("run-1", ReplyState.CARD)
    # The lease moved on in Redis (it expired there, another replica took it) while the old
    # owner's own deadline has not passed yet.
    await redis_client.delete(f"{key_prefix}:lease:9")
    new = ChannelLease(redis_client, key_prefix, "new", ttl_s=5)
    assert await new.acquire(9) is not None
    await ReplyLedger(redis_client, key_prefix, new.fenced(9)).set("run-1", ReplyState.DONE)
    assert old.fenced(9).valid(), "locally the old owner still believes it holds the channel"
    with pytest.raises(LeaseExpired):
        await stale.set("run-1", ReplyState.CARD)
    assert await stale.get("run-1") == ReplyState.DONE, "what the new owner wrote stands"
