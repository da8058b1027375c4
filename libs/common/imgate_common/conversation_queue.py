"""One run at a time per conversation, in arrival order, across every router and runner replica.

Redis holds, per conversation, the run that is active, the runs waiting behind it, and the runs
that finished lately. The router admits a run (start now, or wait at position N); a runner
claims the run it takes and keeps the claim alive while the run lives; the runner that finishes
a run publishes the next one and only then advances the queue, so a crash in between repeats a
step instead of losing one.

- A finished run is never admitted again (a message redelivered after its run finished).
- The lock lives as long as its run: a run admitted but not yet taken by a runner holds it for
  `pending_ttl`; a runner's claim holds it for a short lease, renewed by the runner's heartbeat.
- A lock that expired never strands the runs behind it: the next admission, or the sweeper,
  publishes the head of the queue.
- Every key expires.
"""

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from imgate_common.messages import RunRequest

# admit(run_id, request, max_depth, pending_ttl_ms, keep_ms, conversation_id)
#   → 0 start now | N waiting at N | -1 queue full | -2 the run finished already
# A conversation without an active run but with runs waiting (its lock expired) starts none
# here: the new run waits behind them, and the caller promotes the head.
_ADMIT = """
if redis.call('zscore', KEYS[4], ARGV[1]) then return -2 end
local active = redis.call('get', KEYS[1])
if active == ARGV[1] then return 0 end
local pos = redis.call('lpos', KEYS[2], ARGV[1])
if pos then return pos + 1 end
local waiting = redis.call('llen', KEYS[2])
if not active and waiting == 0 then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[4])
  return 0
end
if waiting >= tonumber(ARGV[3]) then return -1 end
redis.call('rpush', KEYS[2], ARGV[1])
redis.call('hset', KEYS[3], ARGV[1], ARGV[2])
redis.call('pexpire', KEYS[2], ARGV[5])
redis.call('pexpire', KEYS[3], ARGV[5])
redis.call('sadd', KEYS[5], ARGV[6])
redis.call('pexpire', KEYS[5], ARGV[5])
return waiting + 1
"""

# advance(finished_run_id_or_empty, published_next_or_empty, pending_ttl_ms, keep_ms, now_ms,
#         record_finished, conversation_id) → 1 done | 2 a run arrived: look again
_ADVANCE = """
if ARGV[1] ~= '' and ARGV[6] == '1' then
  redis.call('zadd', KEYS[4], ARGV[5], ARGV[1])
  redis.call('zremrangebyscore', KEYS[4], '-inf', tonumber(ARGV[5]) - tonumber(ARGV[4]))
  redis.call('pexpire', KEYS[4], ARGV[4])
end
local active = redis.call('get', KEYS[1])
if active and active ~= ARGV[1] then return 1 end
local head = redis.call('lindex', KEYS[2], 0)
if not head then
  redis.call('del', KEYS[1])
  redis.call('srem', KEYS[5], ARGV[7])
  return 1
end
if head == ARGV[2] then
  redis.call('lpop', KEYS[2])
  redis.call('hdel', KEYS[3], head)
  redis.call('set', KEYS[1], head, 'PX', ARGV[3])
  if redis.call('llen', KEYS[2]) == 0 then redis.call('srem', KEYS[5], ARGV[7]) end
  return 1
end
return 2
"""


# next(finished_run_id_or_empty, pending_ttl_ms) → the request waiting first, when
# finished_run_id is (still) the active run or none is; nil otherwise. One script: a finish
# repeated by a redelivered run must never see the old active run and the new head (it would
# publish a run while another one runs). A finished run that is still the head of the queue was
# published by the run before it, whose advance never landed (Redis went away in between): it
# takes that step itself, or the queue would wait behind a run that is over.
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

# claim(run_id, lease_ms, conversation_id) → 1 the run holds the lock | 0 another run holds it
# | 2 the run finished already (a redelivery: it must not take the lock again). A run that is
# still the head of the queue was published by the run before it, whose advance never landed.
_CLAIM = """
if redis.call('zscore', KEYS[4], ARGV[1]) then return 2 end
local active = redis.call('get', KEYS[1])
if redis.call('lindex', KEYS[2], 0) == ARGV[1] then
  redis.call('lpop', KEYS[2])
  redis.call('hdel', KEYS[3], ARGV[1])
  if redis.call('llen', KEYS[2]) == 0 then redis.call('srem', KEYS[5], ARGV[3]) end
  active = false
end
if active and active ~= ARGV[1] then return 0 end
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# refresh(run_id, lease_ms) → 1 renewed | 0 the run no longer holds the lock
_REFRESH = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('pexpire', KEYS[1], ARGV[2])
return 1
"""


# abandon(run_id, conversation_id) → 1 the run holds the lock: hand it over | 0 it was only
# waiting (now removed) or is unknown: the running one is left alone
_ABANDON = """
if redis.call('get', KEYS[1]) == ARGV[1] then return 1 end
redis.call('lrem', KEYS[2], 0, ARGV[1])
redis.call('hdel', KEYS[3], ARGV[1])
if redis.call('llen', KEYS[2]) == 0 then redis.call('srem', KEYS[5], ARGV[2]) end
return 0
"""


PublishRun = Callable[[RunRequest], Awaitable[None]]


class Admission(StrEnum):
    START = "start"
    QUEUED = "queued"
    FULL = "full"
    FINISHED = "finished"  # the run is over (a redelivered message): nothing to do


@dataclass(frozen=True)
class Admitted:
    admission: Admission
    position: int = 0


class Claim(IntEnum):
    OVERTAKEN = 0  # another run holds the lock (this run's expired while it waited)
    HELD = 1
    FINISHED = 2


class ConversationQueue:
    def __init__(
        self,
        redis: Redis,
        prefix: str,
        active_ttl_s: float,
        lease_ttl_s: float = 90.0,
        keep_s: float = 24 * 3600,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        # A run admitted (or handed the turn) but not yet taken by a runner: it waits in
        # JetStream, durable, until a runner is free; the lock holds that long at most.
        self._ttl_ms = int(active_ttl_s * 1000)
        # A run a runner took: the runner renews this while the run lives, so a dead runner's
        # lock ends soon after JetStream hands the run to another (ack wait < lease).
        self._lease_ms = int(lease_ttl_s * 1000)
        # Waiting runs and finished run ids: as long as JetStream keeps the messages they
        # stand for (the inbound and runs streams keep a day).
        self._keep_ms = int(keep_s * 1000)
        self._scripts: dict[str, AsyncScript] = {}

    async def _eval(self, script: str, numkeys: int, *keys_and_args: str | int) -> Any:
        """Run a script by its digest (EVALSHA), not its text: the text is sent once per process
        (AsyncScript loads it on NOSCRIPT), not on every admission, claim and hand-over."""
        registered = self._scripts.get(script)
        if registered is None:
            registered = self._scripts[script] = self._redis.register_script(script)
        keys = [str(key) for key in keys_and_args[:numkeys]]
        return await registered(keys=keys, args=keys_and_args[numkeys:])

    def _keys(self, conversation_id: str) -> list[str]:
        base = f"{self._prefix}:conv:{conversation_id}"
        return [f"{base}:active", f"{base}:queue", f"{base}:requests", f"{base}:finished", self._index]

    @property
    def _index(self) -> str:
        """Conversations with runs waiting, for the sweeper."""
        return f"{self._prefix}:convq:waiting"

    async def admit(self, request: RunRequest, max_depth: int) -> Admitted:
        result = int(
            await self._eval(
                _ADMIT,
                5,
                *self._keys(request.conversation_id),
                request.run_id,
                request.model_dump_json(),
                max_depth,
                self._ttl_ms,
                self._keep_ms,
                request.conversation_id,
            )
        )
        if result == 0:
            return Admitted(Admission.START)
        if result == -1:
            return Admitted(Admission.FULL)
        if result == -2:
            return Admitted(Admission.FINISHED)
        return Admitted(Admission.QUEUED, result)

    async def claim(self, conversation_id: str, run_id: str) -> Claim:
        """A runner took `run_id`: it holds the lock for one lease, renewed by `refresh`."""
        keys = self._keys(conversation_id)
        raw = await self._eval(_CLAIM, 5, *keys, run_id, self._lease_ms, conversation_id)
        return Claim(int(raw))

    async def refresh(self, conversation_id: str, run_id: str) -> bool:
        """The runner's heartbeat: False when the run no longer holds the lock."""
        key = self._keys(conversation_id)[0]
        return int(await self._eval(_REFRESH, 1, key, run_id, self._lease_ms)) == 1

    async def next_after(self, conversation_id: str, run_id: str) -> RunRequest | None:
        """The run waiting behind `run_id`, if `run_id` is (still) the active one ("" for
        none: the run waiting first in a conversation whose lock is gone)."""
        keys = self._keys(conversation_id)
        raw = await self._eval(_NEXT, 5, *keys, run_id, self._ttl_ms)
        return RunRequest.model_validate_json(raw) if raw else None

    async def advance(
        self, conversation_id: str, run_id: str, next_run_id: str | None, *, finished: bool = True
    ) -> bool:
        """Mark `run_id` finished and make `next_run_id` (already published) the active run.
        False when a run was queued after `next_after` looked: look and publish again."""
        result = await self._eval(
            _ADVANCE,
            5,
            *self._keys(conversation_id),
            run_id,
            next_run_id or "",
            self._ttl_ms,
            self._keep_ms,
            int(time.time() * 1000),
            "1" if finished else "0",
            conversation_id,
        )
        return int(result) == 1

    async def hand_over(
        self, run_id: str, conversation_id: str, publish: PublishRun, *, finished: bool = True
    ) -> None:
        """After `run_id` ended: publish the run waiting behind it (if any), then advance. Safe
        to repeat: a crash before `advance` republishes the same run, which JetStream drops."""
        while True:
            following = await self.next_after(conversation_id, run_id)
            if following is not None:
                await publish(following)
            if await self.advance(
                conversation_id, run_id, following.run_id if following else None, finished=finished
            ):
                return

    async def release(self, run_id: str, conversation_id: str, publish: PublishRun) -> None:
        """`run_id` was given up on before it ran: pass its turn on if it holds the lock, leave
        the queue if it waits, without recording it as finished (a replay of its message must
        be admitted again)."""
        keys = self._keys(conversation_id)
        if int(await self._eval(_ABANDON, 5, *keys, run_id, conversation_id)):
            await self.hand_over(run_id, conversation_id, publish, finished=False)
        else:
            await self.promote(conversation_id, publish)

    async def promote(self, conversation_id: str, publish: PublishRun) -> None:
        """If no run holds the conversation (its lock expired), start the run waiting first."""
        await self.hand_over("", conversation_id, publish, finished=False)

    async def sweep(self, publish: PublishRun) -> int:
        """Promote the head of every conversation whose lock is gone; returns how many
        conversations it looked at. Run by every router now and then."""
        looked = 0
        async for member in self._redis.sscan_iter(self._index):
            await self.promote(_text(member), publish)
            looked += 1
        return looked

    async def waiting(self, conversation_id: str) -> int:
        return int(await self._redis.llen(self._keys(conversation_id)[1]))

    async def active(self, conversation_id: str) -> str | None:
        value = await self._redis.get(self._keys(conversation_id)[0])
        return _text(value) if value is not None else None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
