"""What became of each run's reply, in Redis, so a channel's next owner carries on correctly.

A channel can change owner mid-answer (a replica died, or handed the channel over). The new
owner must neither open a second card for a run whose card exists, nor answer a run again that
was answered already but whose final event was not yet acknowledged. A channel's ledger writes
carry its lease: one from a replica whose lease has passed (locally, or in Redis: a newer owner
holds it) is refused, so a stale owner never overwrites what the new one recorded.
"""

from collections.abc import Awaitable
from enum import StrEnum
from typing import TypeVar

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from imgate_connector.lease import LeaseExpired, LeaseFence, within

log = structlog.get_logger()

T = TypeVar("T")

# Longer than reply events live in JetStream (1 h), and than a sessionWebhook is valid (~1.5 h).
LEDGER_TTL_S = 3 * 3600


# KEYS: the run's entry, the channel's lease; ARGV: state, ttl_s, the writer's lease value.
_FENCED_SET = """
if redis.call('get', KEYS[2]) ~= ARGV[3] then
  return 0
end
redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""


class ReplyState(StrEnum):
    OPENING = "opening"  # a replica is creating the card
    CARD = "card"  # the card exists
    PLAIN = "plain"  # no card could be made: the answer goes out as plain text
    DONE = "done"  # the final answer was delivered


class ReplyLedger:
    def __init__(self, redis: Redis, prefix: str, fence: LeaseFence | None = None) -> None:
        self._redis = redis
        self._prefix = prefix
        self._fence = fence
        self._timeout_s = fence.call_timeout_s if fence is not None else None

    def _key(self, run_id: str) -> str:
        return f"{self._prefix}:reply:{run_id}"

    async def get(self, run_id: str) -> ReplyState | None:
        """None when unknown, or when Redis cannot say (then we act as if we were first)."""
        try:
            value = await self._call(self._redis.get(self._key(run_id)))
        except (RedisError, TimeoutError) as exc:
            log.warning("reply_ledger_unavailable", run_id=run_id, error=str(exc))
            return None
        if not value:
            return None
        try:
            return ReplyState(value.decode() if isinstance(value, bytes) else str(value))
        except ValueError:
            return None

    async def set(self, run_id: str, state: ReplyState) -> None:
        """Record the run's state; `LeaseExpired` when the channel is no longer ours to write."""
        fence = self._fence
        try:
            if fence is None:
                await self._redis.set(self._key(run_id), state.value, ex=LEDGER_TTL_S)
                return
            fence.check()
            script = self._redis.eval(
                _FENCED_SET, 2, self._key(run_id), fence.key, state.value, LEDGER_TTL_S, fence.token
            )
            written = await self._call(script)  # type: ignore[arg-type]
        except (RedisError, TimeoutError) as exc:
            log.warning("reply_ledger_unavailable", run_id=run_id, error=str(exc) or type(exc).__name__)
            return
        if not written:
            raise LeaseExpired(
                f"ledger write for run {run_id} refused: the lease moved on from {fence.token}"
            )

    async def _call(self, call: Awaitable[T]) -> T:
        if self._timeout_s is None:
            return await call
        return await within(self._timeout_s, call)


# A conversation's order entries outlive the longest an answer can take to be shown here.
ORDER_TTL_S = 3600


class FinalsOrder:
    """Each conversation's runs whose final answer is not shown yet, scored by when their
    messages were sent, in Redis: a channel's next owner holds a later final back while a run
    the last owner had not finished is still on its way (its events come again to the new
    owner once their ack wait is over). Redis failures never hold a final back."""

    def __init__(self, redis: Redis, prefix: str, fence: LeaseFence | None = None) -> None:
        self._redis = redis
        self._prefix = prefix
        self._timeout_s = fence.call_timeout_s if fence is not None else None

    def _key(self, conversation: str) -> str:
        return f"{self._prefix}:finals-order:{conversation}"

    async def add(self, conversation: str, run_id: str, at: float) -> None:
        key = self._key(conversation)
        pipe = self._redis.pipeline(transaction=False)
        pipe.zadd(key, {run_id: at}, nx=True)
        pipe.expire(key, ORDER_TTL_S)
        await self._quietly(pipe.execute(), "add", run_id)

    async def remove(self, conversation: str, run_id: str) -> None:
        await self._quietly(self._redis.zrem(self._key(conversation), run_id), "remove", run_id)

    async def earlier(self, conversation: str, run_id: str, at: float) -> list[str]:
        """Runs of the conversation sent before `at` whose final is not shown yet."""
        found = await self._quietly(
            self._redis.zrangebyscore(self._key(conversation), "-inf", f"({at}"), "read", run_id
        )
        names = [m.decode() if isinstance(m, bytes) else str(m) for m in found or []]
        return [name for name in names if name != run_id]

    async def _quietly(self, call: Awaitable[T], action: str, run_id: str) -> T | None:
        try:
            if self._timeout_s is None:
                return await call
            return await within(self._timeout_s, call)
        except (RedisError, TimeoutError) as exc:
            log.warning("finals_order_unavailable", action=action, run_id=run_id, error=str(exc))
            return None
