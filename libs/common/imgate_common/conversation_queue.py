"""One run at a time per conversation, in arrival order, across every router and runner replica.

Redis holds, per conversation, the run that is active and the runs waiting behind it. The router
admits a run (start now, or wait at position N); the runner that finishes a run publishes the next
one and only then advances the queue, so a crash in between repeats a step instead of losing one.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from redis.asyncio import Redis

from imgate_common.messages import RunRequest

# admit(run_id, request, max_depth, ttl_ms) → 0 start now | N waiting at N | -1 queue full
_ADMIT = """
local active = redis.call('get', KEYS[1])
if active == ARGV[1] then return 0 end
local pos = redis.call('lpos', KEYS[2], ARGV[1])
if pos then return pos + 1 end
if not active then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[4])
  return 0
end
if redis.call('llen', KEYS[2]) >= tonumber(ARGV[3]) then return -1 end
redis.call('rpush', KEYS[2], ARGV[1])
redis.call('hset', KEYS[3], ARGV[1], ARGV[2])
return redis.call('llen', KEYS[2])
"""

# advance(finished_run_id, published_next_or_empty, ttl_ms) → 1 done | 2 a run arrived: look again
_ADVANCE = """
local active = redis.call('get', KEYS[1])
if active and active ~= ARGV[1] then return 1 end
local head = redis.call('lindex', KEYS[2], 0)
if not head then
  redis.call('del', KEYS[1])
  return 1
end
if head == ARGV[2] then
  redis.call('lpop', KEYS[2])
  redis.call('hdel', KEYS[3], head)
  redis.call('set', KEYS[1], head, 'PX', ARGV[3])
  return 1
end
return 2
"""


# next(finished_run_id, ttl_ms) → the request waiting first, when finished_run_id is (still) the
# active run or none is; nil otherwise. One script: a finish repeated by a redelivered run must
# never see the old active run and the new head (it would publish a run while another one runs).
# A finished run that is still the head of the queue was published by the run before it, whose
# advance never landed (Redis went away in between): it takes that step itself, or the queue
# would wait behind a run that is over.
_NEXT = """
local active = redis.call('get', KEYS[1])
local head = redis.call('lindex', KEYS[2], 0)
if head == ARGV[1] then
  redis.call('lpop', KEYS[2])
  redis.call('hdel', KEYS[3], head)
  redis.call('set', KEYS[1], head, 'PX', ARGV[2])
  active = head
  head = redis.call('lindex', KEYS[2], 0)
end
if active and active ~= ARGV[1] then return false end
if not head then return false end
return redis.call('hget', KEYS[3], head)
"""


PublishRun = Callable[[RunRequest], Awaitable[None]]


class Admission(StrEnum):
    START = "start"
    QUEUED = "queued"
    FULL = "full"


@dataclass(frozen=True)
class Admitted:
    admission: Admission
    position: int = 0


class ConversationQueue:
    def __init__(self, redis: Redis, prefix: str, active_ttl_s: float) -> None:
        self._redis = redis
        self._prefix = prefix
        # An active marker outlives any run (a crashed one included) but not forever.
        self._ttl_ms = int(active_ttl_s * 1000)

    def _keys(self, conversation_id: str) -> list[str]:
        base = f"{self._prefix}:conv:{conversation_id}"
        return [f"{base}:active", f"{base}:queue", f"{base}:requests"]

    async def admit(self, request: RunRequest, max_depth: int) -> Admitted:
        result = int(
            await self._redis.eval(  # type: ignore[misc]
                _ADMIT,
                3,
                *self._keys(request.conversation_id),
                request.run_id,
                request.model_dump_json(),
                max_depth,
                self._ttl_ms,
            )
        )
        if result == 0:
            return Admitted(Admission.START)
        if result < 0:
            return Admitted(Admission.FULL)
        return Admitted(Admission.QUEUED, result)

    async def next_after(self, conversation_id: str, run_id: str) -> RunRequest | None:
        """The run waiting behind `run_id`, if `run_id` is (still) the active one."""
        keys = self._keys(conversation_id)
        raw = await self._redis.eval(_NEXT, 3, *keys, run_id, self._ttl_ms)  # type: ignore[misc]
        return RunRequest.model_validate_json(raw) if raw else None

    async def advance(self, conversation_id: str, run_id: str, next_run_id: str | None) -> bool:
        """Mark `run_id` finished and make `next_run_id` (already published) the active run.
        False when a run was queued after `next_after` looked: look and publish again."""
        result = await self._redis.eval(  # type: ignore[misc]
            _ADVANCE, 3, *self._keys(conversation_id), run_id, next_run_id or "", self._ttl_ms
        )
        return int(result) == 1

    async def hand_over(self, run_id: str, conversation_id: str, publish: "PublishRun") -> None:
        """After `run_id` ended: publish the run waiting behind it (if any), then advance. Safe
        to repeat: a crash before `advance` republishes the same run, which JetStream drops."""
        while True:
            following = await self.next_after(conversation_id, run_id)
            if following is not None:
                await publish(following)
            if await self.advance(conversation_id, run_id, following.run_id if following else None):
                return

    async def waiting(self, conversation_id: str) -> int:
        return int(await self._redis.llen(self._keys(conversation_id)[1]))  # type: ignore[misc]

    async def active(self, conversation_id: str) -> str | None:
        value = await self._redis.get(self._keys(conversation_id)[0])
        return _text(value) if value is not None else None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
