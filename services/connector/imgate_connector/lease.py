"""Channel ownership: Redis leases with fencing tokens, and the live replicas that share channels.

A replica holds a channel while its lease (`SET NX PX`) carries its token. It renews every lease
often; one it could not renew for most of a TTL is treated as lost even before Redis says so
(self-fencing), so two replicas never both believe they own a channel for long. Every side
effect of a channel (the platform ACK, a card call, a ledger write) asks its `LeaseFence` first:
a local deadline that passes before the lease can expire in Redis, however slowly Redis answers,
since every Redis call made under a lease gives up well inside the remaining margin.

Channels are spread by rendezvous hashing with bounded loads over the live replicas: every
replica computes the same placement (each channel goes to its highest-weighted replica that still
has room, room being an equal share), the placed replica takes a free channel at once, the others
only after a grace period (so nothing stays unowned when the placed replica is busy or gone).
"""

import asyncio
import hashlib
import math
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from redis.asyncio import Redis

from imgate_connector.metrics import CHANNELS_OWNED, LEASE_CHANGES

# Renew or release only while the lease still carries our token.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""
# KEYS[1] replica set; ARGV: member, ttl_ms → the live members. Scores are expiry times taken
# from Redis' clock, so replicas on hosts with skewed clocks agree.
_BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('zremrangebyscore', KEYS[1], '-inf', now)
if ARGV[1] ~= '' then
  redis.call('zadd', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
end
return redis.call('zrange', KEYS[1], 0, -1)
"""
# A renewal must land within this share of the TTL, or we stop trusting the lease ourselves.
SELF_FENCE_SHARE = 0.8
# A Redis call made under a lease gives up after this share of the TTL: half the margin between
# the local deadline and the lease's expiry in Redis, so a black-holed Redis (no answer, no
# error) cannot hold a replica past its deadline.
CALL_TIMEOUT_SHARE = (1 - SELF_FENCE_SHARE) / 2

T = TypeVar("T")


class LeaseExpired(Exception):
    """The channel's lease is no longer ours to act on (its local deadline passed)."""


async def within(timeout_s: float, call: Awaitable[T]) -> T:
    """A Redis call under a lease: `TimeoutError` once `timeout_s` passed without an answer."""
    async with asyncio.timeout(timeout_s):
        return await call


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ChannelLease:
    def __init__(self, redis: Redis, prefix: str, owner: str, ttl_s: float) -> None:
        self._redis = redis
        self._prefix = prefix
        self.owner = owner
        self.ttl_s = ttl_s
        self._ttl_ms = int(ttl_s * 1000)
        self.call_timeout_s = ttl_s * CALL_TIMEOUT_SHARE
        self._tokens: dict[int, str] = {}
        self._valid_until: dict[int, float] = {}

    def _key(self, channel_id: int) -> str:
        return f"{self._prefix}:lease:{channel_id}"

    async def acquire(self, channel_id: int) -> int | None:
        """Take the lease if free; returns the fencing token (grows with every new holder)."""
        if channel_id in self._tokens:
            return self.fence(channel_id)
        if await within(self.call_timeout_s, self._redis.exists(self._key(channel_id))):
            return None
        started = time.monotonic()
        fence = await within(
            self.call_timeout_s, self._redis.incr(f"{self._prefix}:lease-fence:{channel_id}")
        )
        value = f"{self.owner}#{fence}"
        taken = self._redis.set(self._key(channel_id), value, nx=True, px=self._ttl_ms)
        if await within(self.call_timeout_s, taken):
            self._tokens[channel_id] = value
            self._valid_until[channel_id] = started + self.ttl_s * SELF_FENCE_SHARE
            LEASE_CHANGES.labels("acquired").inc()
            CHANNELS_OWNED.set(len(self._tokens))
            return int(fence)
        return None

    def fence(self, channel_id: int) -> int | None:
        value = self._tokens.get(channel_id)
        return int(value.rsplit("#", 1)[1]) if value else None

    def valid(self, channel_id: int) -> bool:
        """Held, and renewed recently enough to trust without asking Redis."""
        return channel_id in self._tokens and time.monotonic() < self._valid_until.get(channel_id, 0)

    def token(self, channel_id: int) -> str | None:
        """The lease's value while we hold it (`owner#fence`)."""
        return self._tokens.get(channel_id)

    def key(self, channel_id: int) -> str:
        return self._key(channel_id)

    def fenced(self, channel_id: int) -> "LeaseFence":
        """What the channel's side effects check: this holding of the lease, and its deadline."""
        token = self._tokens.get(channel_id)
        if token is None:
            raise LeaseExpired(f"channel {channel_id} is not held here")
        return LeaseFence(self, channel_id, token)

    async def renew(self, channel_id: int) -> bool:
        return channel_id not in await self.renew_all([channel_id])

    async def renew_all(self, channel_ids: list[int] | None = None) -> list[int]:
        """Renew the given (default: all held) leases in one round trip; returns those lost."""
        held = [c for c in (self.held() if channel_ids is None else channel_ids) if c in self._tokens]
        if not held:
            return [c for c in channel_ids or [] if c not in self._tokens]
        started = time.monotonic()
        pipe = self._redis.pipeline(transaction=False)
        for channel_id in held:
            pipe.eval(_RENEW, 1, self._key(channel_id), self._tokens[channel_id], self._ttl_ms)
        results = await within(self.call_timeout_s, pipe.execute())
        lost = []
        for channel_id, ok in zip(held, results, strict=True):
            if ok:
                self._valid_until[channel_id] = started + self.ttl_s * SELF_FENCE_SHARE
            else:
                self.forget(channel_id)
                lost.append(channel_id)
                LEASE_CHANGES.labels("lost").inc()
        return lost

    def forget(self, channel_id: int) -> None:
        """Stop believing we hold it (Redis said no, or we could not ask in time)."""
        self._tokens.pop(channel_id, None)
        self._valid_until.pop(channel_id, None)
        CHANNELS_OWNED.set(len(self._tokens))

    async def release(self, channel_id: int) -> None:
        value = self._tokens.get(channel_id)
        self.forget(channel_id)
        if value is not None:
            LEASE_CHANGES.labels("released").inc()
            released = self._redis.eval(_RELEASE, 1, self._key(channel_id), value)
            await within(self.call_timeout_s, released)  # type: ignore[arg-type]

    async def holder(self, channel_id: int) -> str | None:
        return (await self.holders([channel_id]))[channel_id]

    async def holders(self, channel_ids: list[int]) -> dict[int, str | None]:
        """Who holds each channel now (None: free), in one round trip."""
        if not channel_ids:
            return {}
        values = await within(self.call_timeout_s, self._redis.mget([self._key(c) for c in channel_ids]))
        return {
            c: _text(v).rsplit("#", 1)[0] if v else None for c, v in zip(channel_ids, values, strict=True)
        }

    def held(self) -> list[int]:
        return list(self._tokens)


@dataclass(frozen=True)
class LeaseFence:
    """One holding of one channel's lease, as its side effects see it."""

    lease: ChannelLease
    channel_id: int
    token: str  # the lease's value: owner#fence

    @property
    def key(self) -> str:
        return self.lease.key(self.channel_id)

    @property
    def call_timeout_s(self) -> float:
        return self.lease.call_timeout_s

    def valid(self) -> bool:
        """Still ours: the same holding, inside its local deadline."""
        return self.lease.token(self.channel_id) == self.token and self.lease.valid(self.channel_id)

    def check(self) -> None:
        if not self.valid():
            raise LeaseExpired(f"the lease of channel {self.channel_id} ({self.token}) is no longer ours")


class ReplicaSet:
    """The connector replicas alive right now, each announcing itself with a short TTL."""

    def __init__(self, redis: Redis, prefix: str, owner: str, ttl_s: float) -> None:
        self._redis = redis
        self._key = f"{prefix}:connector-replicas"
        self.owner = owner
        self._ttl_ms = int(ttl_s * 1000)
        # The lease loop beats too: a black-holed Redis must not hold it past a lease's deadline.
        self._call_timeout_s = ttl_s * CALL_TIMEOUT_SHARE
        self.live: list[str] = [owner]
        # When each replica was first seen: a newcomer gets channels handed over only once stable.
        self.first_seen: dict[str, float] = {owner: time.monotonic()}

    async def beat(self) -> list[str]:
        beat = self._redis.eval(_BEAT, 1, self._key, self.owner, self._ttl_ms)
        members = await within(self._call_timeout_s, beat)  # type: ignore[arg-type]
        self._update(sorted({_text(m) for m in members} | {self.owner}))
        return self.live

    async def leave(self) -> None:
        await self._redis.zrem(self._key, self.owner)

    def _update(self, live: list[str]) -> None:
        now = time.monotonic()
        self.first_seen = {r: self.first_seen.get(r, now) for r in live}
        self.live = live

    def fair_share(self, channels: int) -> int:
        return math.ceil(channels / max(1, len(self.live)))

    def place(self, channel_ids: list[int]) -> dict[int, str]:
        return place_channels(channel_ids, self.live)


def _weight(channel_id: int, replica: str) -> int:
    digest = hashlib.blake2b(f"{channel_id}/{replica}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def place_channels(channel_ids: list[int], replicas: list[str]) -> dict[int, str]:
    """Rendezvous hashing with bounded loads: each channel, in id order, goes to the replica it
    weighs most on among those below an equal share. Every replica computes the same placement
    from the same inputs, and none gets more than an equal share (rounded up)."""
    if not replicas:
        return {}
    room = math.ceil(len(channel_ids) / len(replicas))
    load = dict.fromkeys(replicas, 0)
    placement: dict[int, str] = {}
    for channel_id in sorted(channel_ids):
        for replica in sorted(replicas, key=lambda r: _weight(channel_id, r), reverse=True):
            if load[replica] < room:
                placement[channel_id] = replica
                load[replica] += 1
                break
    return placement
