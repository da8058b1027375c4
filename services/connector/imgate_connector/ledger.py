"""What became of each run's reply, in Redis, so a channel's next owner carries on correctly.

A channel can change owner mid-answer (a replica died, or handed the channel over). The new
owner must neither open a second card for a run whose card exists, nor answer a run again that
was answered already but whose final event was not yet acknowledged.
"""

from enum import StrEnum

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = structlog.get_logger()

# Longer than reply events live in JetStream (1 h), and than a sessionWebhook is valid (~1.5 h).
LEDGER_TTL_S = 3 * 3600


class ReplyState(StrEnum):
    OPENING = "opening"  # a replica is creating the card
    CARD = "card"  # the card exists
    PLAIN = "plain"  # no card could be made: the answer goes out as plain text
    DONE = "done"  # the final answer was delivered


class ReplyLedger:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix

    def _key(self, run_id: str) -> str:
        return f"{self._prefix}:reply:{run_id}"

    async def get(self, run_id: str) -> ReplyState | None:
        """None when unknown, or when Redis cannot say (then we act as if we were first)."""
        try:
            value = await self._redis.get(self._key(run_id))
        except RedisError as exc:
            log.warning("reply_ledger_unavailable", run_id=run_id, error=str(exc))
            return None
        if not value:
            return None
        try:
            return ReplyState(value.decode() if isinstance(value, bytes) else str(value))
        except ValueError:
            return None

    async def set(self, run_id: str, state: ReplyState) -> None:
        try:
            await self._redis.set(self._key(run_id), state.value, ex=LEDGER_TTL_S)
        except RedisError as exc:
            log.warning("reply_ledger_unavailable", run_id=run_id, error=str(exc))
