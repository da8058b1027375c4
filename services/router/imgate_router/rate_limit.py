"""Inbound rate limits per sender and per channel, shared by every router replica (Redis).

One user sending faster than `ROUTER_RATE_USER_PER_WINDOW` messages per `ROUTER_RATE_WINDOW_S`
(or a whole channel past `ROUTER_RATE_CHANNEL_PER_WINDOW`) is not run: each such message is
answered with a polite sentence and ends there, so neither its run, its identity lookup nor its
model call takes what other users need. A message refused does not count against the limits.
Fixed windows (one counter per window, expiring with it) keep it to one script call.
"""

import time
from dataclasses import dataclass
from enum import StrEnum

from redis.asyncio import Redis

from imgate_common.messages import InboundMessage

# KEYS[k], KEYS[k + 1]: the sender's and the channel's counter of this window (k = ARGV[4]).
# ARGV: their limits (0: none), the window in ms. Returns 0 (counted), 1 (sender over),
# 2 (channel over).
_COUNT = """
local k = tonumber(ARGV[4])
local user_limit = tonumber(ARGV[1])
local channel_limit = tonumber(ARGV[2])
if user_limit > 0 and tonumber(redis.call('GET', KEYS[k]) or '0') >= user_limit then return 1 end
if channel_limit > 0 and tonumber(redis.call('GET', KEYS[k + 1]) or '0') >= channel_limit then return 2 end
for i = k, k + 1 do
  if redis.call('INCR', KEYS[i]) == 1 then redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
end
return 0
"""
# The router's first step in one round trip: KEYS[1] is the message's dedup key, the counters
# follow. ARGV[5]: 1 to count the message, 0 not to (a /stop, a message nothing runs for).
# Returns 3, counting nothing, when the message was handled already.
_SEEN_OR_COUNT = (
    """
if redis.call('EXISTS', KEYS[1]) == 1 then return 3 end
if ARGV[5] == '0' then return 0 end
"""
    + _COUNT
)


class Limited(StrEnum):
    USER = "user"
    CHANNEL = "channel"


class Seen(StrEnum):
    SEEN = "seen"  # the message was handled already


@dataclass(frozen=True)
class RateLimits:
    window_s: float = 60.0
    per_user: int = 20  # messages one sender may send per window (0: no limit)
    per_channel: int = 3000  # messages a whole channel may receive per window (0: no limit)


class InboundRateLimiter:
    def __init__(self, redis: Redis, prefix: str, limits: RateLimits) -> None:
        self._redis = redis
        self._prefix = prefix
        self.limits = limits
        self._take = redis.register_script(_COUNT)
        self._seen_or_take = redis.register_script(_SEEN_OR_COUNT)

    def _keys(self, message: InboundMessage, now: float | None) -> list[str]:
        window = int((time.time() if now is None else now) // self.limits.window_s)
        base = f"{self._prefix}:rate:{message.platform}:{message.channel_id}"
        return [f"{base}:user:{message.sender.id}:{window}", f"{base}:all:{window}"]

    def _args(self, first_key: int) -> list[int]:
        limits = self.limits
        # Twice the window: a counter outlives its window a little, never for long.
        ttl_ms = int(limits.window_s * 2000)
        return [limits.per_user, limits.per_channel, ttl_ms, first_key]

    async def take(self, message: InboundMessage, now: float | None = None) -> Limited | None:
        """Count the message; which limit it is over instead (then it was not counted)."""
        limits = self.limits
        if limits.per_user <= 0 and limits.per_channel <= 0:
            return None
        result = int(await self._take(keys=self._keys(message, now), args=self._args(1)))
        return {0: None, 1: Limited.USER, 2: Limited.CHANNEL}[result]

    async def seen_or_take(
        self, message: InboundMessage, seen_key: str, count: bool
    ) -> Seen | Limited | None:
        """One round trip for the first step of routing: `Seen.SEEN` when `seen_key` exists
        (nothing counted); else, when `count`, the message counted, or the limit it is over."""
        unlimited = self.limits.per_user <= 0 and self.limits.per_channel <= 0
        keys = [seen_key, *self._keys(message, None)]
        args = [*self._args(2), int(count and not unlimited)]
        return _OUTCOME[int(await self._seen_or_take(keys=keys, args=args))]


_OUTCOME: dict[int, Seen | Limited | None] = {0: None, 1: Limited.USER, 2: Limited.CHANNEL, 3: Seen.SEEN}
