"""The card API budget of one platform app: a token bucket in Redis, shared by every replica.

DingTalk counts card calls per app, so every connector replica draws from the same bucket. The
bucket refills at the app's rate; a 403 QpsLimit / 429 halves the rate (and empties the bucket),
after which the rate climbs back by a twentieth of the configured rate per second. Streaming
updates only draw while a reserve is left, so the calls that must happen (create, final) still
find tokens under load.
"""

import asyncio
import random

from redis.asyncio import Redis

from imgate_connector.lease import within

# KEYS[1] bucket; ARGV: rate, burst, n, reserve, ttl_ms → 0 when granted, else ms to wait.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local max_rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local reserve = tonumber(ARGV[4])
local s = redis.call('HMGET', KEYS[1], 'tokens', 'ts', 'rate')
local tokens = tonumber(s[1]) or burst
local ts = tonumber(s[2]) or now
local rate = tonumber(s[3]) or max_rate
local elapsed = math.max(0, now - ts)
rate = math.min(max_rate, rate + elapsed * max_rate / 20000)
tokens = math.min(burst, tokens + elapsed * rate / 1000)
local wait = 0
if tokens - n >= reserve then
  tokens = tokens - n
else
  wait = math.ceil((n + reserve - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now), 'rate', tostring(rate))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return wait
"""

# KEYS[1] bucket; ARGV: max rate, min rate, ttl_ms. The platform said "too fast": slow down.
_PENALIZE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(redis.call('HGET', KEYS[1], 'rate')) or tonumber(ARGV[1])
rate = math.max(tonumber(ARGV[2]), rate / 2)
redis.call('HSET', KEYS[1], 'tokens', '0', 'ts', tostring(now), 'rate', tostring(rate))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return tostring(rate)
"""

# Buckets of apps nobody uses any more disappear.
BUCKET_TTL_MS = 10 * 60 * 1000
# Calls that must not wait for tokens longer than this between two looks at the bucket.
MAX_POLL_S = 0.25


class CardBudget:
    """Card API calls per second for one app (`key`), as a shared Redis token bucket."""

    def __init__(
        self, redis: Redis, prefix: str, key: str, rate: float, call_timeout_s: float = 10.0
    ) -> None:
        self._redis = redis
        # Card calls happen under the channel's lease: Redis answers in time or not at all.
        self._timeout_s = call_timeout_s
        self._key = f"{prefix}:card-budget:{key}"
        self.rate = max(0.1, rate)
        # A second's worth of calls may go out at once; never fewer than a final needs (2).
        self._burst = max(2.0, self.rate)
        # Streaming updates leave a quarter of the bucket to creates and finals.
        self._reserve = self._burst / 4

    async def try_take(self, n: int = 1) -> bool:
        """Tokens for optional calls (streaming updates): only while the reserve is left."""
        try:
            wait = await self._take(n, min(self._reserve, self._burst - n))
        except TimeoutError:  # Redis is slow to answer: skip this update, the next one comes
            return False
        return wait == 0

    async def take(self, n: int = 1) -> None:
        """Tokens for calls that must happen: waits until the bucket has them."""
        while True:
            try:
                wait = await self._take(n, 0.0)
            except TimeoutError:  # Redis did not answer in time: ask again (the lease ends this)
                wait = int(MAX_POLL_S * 1000)
            if wait == 0:
                return
            # Jitter spreads replicas waiting on the same bucket.
            await asyncio.sleep(min(wait / 1000, MAX_POLL_S) * random.uniform(0.8, 1.2))

    async def penalize(self) -> float:
        """The platform throttled us: halve the app's rate and start from an empty bucket."""
        call = self._redis.eval(_PENALIZE, 1, self._key, self.rate, max(0.5, self.rate / 20), BUCKET_TTL_MS)
        rate = await within(self._timeout_s, call)  # type: ignore[arg-type]
        return float(rate)

    async def _take(self, n: int, reserve: float) -> int:
        call = self._redis.eval(_TAKE, 1, self._key, self.rate, self._burst, n, reserve, BUCKET_TTL_MS)
        wait = await within(self._timeout_s, call)  # type: ignore[arg-type]
        return int(wait)
