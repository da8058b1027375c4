"""Channel ownership: a Redis lease with a fencing token, so one replica holds each channel."""

from redis.asyncio import Redis

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


class ChannelLease:
    def __init__(self, redis: Redis, prefix: str, owner: str, ttl_s: float) -> None:
        self._redis = redis
        self._prefix = prefix
        self.owner = owner
        self._ttl_ms = int(ttl_s * 1000)
        self._tokens: dict[int, str] = {}

    def _key(self, channel_id: int) -> str:
        return f"{self._prefix}:lease:{channel_id}"

    async def acquire(self, channel_id: int) -> int | None:
        """Take the lease if free; returns the fencing token (grows with every new holder)."""
        if channel_id in self._tokens:
            return int(self._tokens[channel_id].rsplit("#", 1)[1])
        fence = await self._redis.incr(f"{self._prefix}:lease-fence:{channel_id}")
        value = f"{self.owner}#{fence}"
        if await self._redis.set(self._key(channel_id), value, nx=True, px=self._ttl_ms):
            self._tokens[channel_id] = value
            return int(fence)
        return None

    async def renew(self, channel_id: int) -> bool:
        value = self._tokens.get(channel_id)
        if value is None:
            return False
        if await self._redis.eval(_RENEW, 1, self._key(channel_id), value, self._ttl_ms):
            return True
        self._tokens.pop(channel_id, None)
        return False

    async def release(self, channel_id: int) -> None:
        value = self._tokens.pop(channel_id, None)
        if value is not None:
            await self._redis.eval(_RELEASE, 1, self._key(channel_id), value)

    async def holder(self, channel_id: int) -> str | None:
        value = await self._redis.get(self._key(channel_id))
        if not value:
            return None
        text = value.decode() if isinstance(value, bytes) else str(value)
        return text.rsplit("#", 1)[0]

    def held(self) -> list[int]:
        return list(self._tokens)
