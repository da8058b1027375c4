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

# KEYS: the sender's and the channel's counter of this window. ARGV: their limits (0: none),
# the window in ms. Returns 0 (counted), 1 (sender over), 2 (channel over).
_TAKE = """
local user_limit = tonumber(ARGV[1])
local channel_limit = tonumber(ARGV[2])
if user_limit > 0 and tonumber(redis.call('GET', KEYS[1]) or '0') >= user_limit then return 1 end
if channel_limit > 0 and tonumber(redis.call('GET', KEYS[2]) or '0') >= channel_limit then return 2 end
for _, key in ipairs(KEYS) do
  if redis.call('INCR', key) == 1 then redis.call('PEXPIRE', key, ARGV[3]) end
end
return 0
"""


class Limited(StrEnum):
    USER = "user"
    CHANNEL = "channel"


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
        self._take = redis.register_script(_TAKE)

    async def take(self, message: InboundMessage, now: float | None = None) -> Limited | None:
        """Count the message; which limit it is over instead (then it was not counted)."""
        limits = self.limits
        if limits.per_user <= 0 and limits.per_channel <= 0:
            return None
        window = int((time.time() if now is None else now) // limits.window_s)
        base = f"{self._prefix}:rate:{message.platform}:{message.channel_id}"
        keys = [f"{base}:user:{message.sender.id}:{window}", f"{base}:all:{window}"]
        # Twice the window: a counter outlives its window a little, never for long.
        ttl_ms = int(limits.window_s * 2000)
        result = int(await self._take(keys=keys, args=[limits.per_user, limits.per_channel, ttl_ms]))
        return {0: None, 1: Limited.USER, 2: Limited.CHANNEL}[result]
