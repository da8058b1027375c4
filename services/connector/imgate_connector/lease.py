"""Channel ownership: Redis leases with fencing tokens, and the live replicas that share channels.

A replica holds a channel while its lease (`SET NX PX`) carries its token. It renews every lease
often; one it could not renew for most of a TTL is treated as lost even before Redis says so
(self-fencing), so two replicas never both believe they own a channel for long.

Channels are spread by rendezvous hashing with bounded loads over the live replicas: every
replica computes the same placement (each channel goes to its highest-weighted replica that still
has room, room being an equal share), the placed replica takes a free channel at once, the others
only after a grace period (so nothing stays unowned when the placed replica is busy or gone).
"""

import hashlib
import math
import time

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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ChannelLease:
    def __init__(self, redis: Redis, prefix: str, owner: str, ttl_s: float) -> None:
        self._redis = redis
        self._prefix = prefix
        self.owner = owner
        self.ttl_s = ttl_s
        self._ttl_ms = int(ttl_s * 1000)
        self._tokens: dict[int, str] = {}
        self._valid_until: dict[int, float] = {}

    def _key(self, channel_id: int) -> str:
        return f"{self._prefix}:lease:{channel_id}"

    async def acquire(self, channel_id: int) -> int | None:
        """Take the lease if free; returns the fencing token (grows with every new holder)."""
        if channel_id in self._tokens:
            return self.fence(channel_id)
        if await self._redis.exists(self._key(channel_id)):
            return None
        started = time.monotonic()
        fence = await self._redis.incr(f"{self._prefix}:lease-fence:{channel_id}")
        value = f"{self.owner}#{fence}"
        if await self._redis.set(self._key(channel_id), value, nx=True, px=self._ttl_ms):
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
        results = await pipe.execute()
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
            await self._redis.eval(_RELEASE, 1, self._key(channel_id), value)  # type: ignore[misc]

    async def holder(self, channel_id: int) -> str | None:
        return (await self.holders([channel_id]))[channel_id]

    async def holders(self, channel_ids: list[int]) -> dict[int, str | None]:
        """Who holds each channel now (None: free), in one round trip."""
        if not channel_ids:
            return {}
        values = await self._redis.mget([self._key(c) for c in channel_ids])
        return {
            c: _text(v).rsplit("#", 1)[0] if v else None for c, v in zip(channel_ids, values, strict=True)
        }

    def held(self) -> list[int]:
        return list(self._tokens)


class ReplicaSet:
    """The connector replicas alive right now, each announcing itself with a short TTL."""

    def __init__(self, redis: Redis, prefix: str, owner: str, ttl_s: float) -> None:
        self._redis = redis
        self._key = f"{prefix}:connector-replicas"
        self.owner = owner
        self._ttl_ms = int(ttl_s * 1000)
        self.live: list[str] = [owner]
        # When each replica was first seen: a newcomer gets channels handed over only once stable.
        self.first_seen: dict[str, float] = {owner: time.monotonic()}

    async def beat(self) -> list[str]:
        members = await self._redis.eval(_BEAT, 1, self._key, self.owner, self._ttl_ms)  # type: ignore[misc]
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
