"""The live status store: connectors write each channel's health, admin-api reads it.

Other services report errors they meet on a channel's behalf (an identity directory that is down,
say) with `record_error`; `read` shows the newest error from either source.
"""

from datetime import datetime

from pydantic import BaseModel
from redis.asyncio import Redis

from imgate_common.messages import ChannelState, ChannelStatus, utcnow

# A connector refreshes every few seconds; an entry this old means its owner is gone.
STATUS_TTL_S = 15
# A reported error stays visible this long after it last happened.
ERROR_TTL_S = 3600


class ReportedError(BaseModel):
    source: str
    message: str
    at: datetime


class ChannelStatusStore:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix

    def _key(self, channel_id: int) -> str:
        return f"{self._prefix}:status:{channel_id}"

    async def put(self, status: ChannelStatus) -> None:
        await self._redis.set(self._key(status.channel_id), status.model_dump_json(), ex=STATUS_TTL_S)

    async def get(self, channel_id: int) -> ChannelStatus | None:
        raw = await self._redis.get(self._key(channel_id))
        return ChannelStatus.model_validate_json(raw) if raw else None

    async def record_error(self, channel_id: int, source: str, message: str) -> None:
        error = ReportedError(source=source, message=message[:500], at=utcnow())
        await self._redis.set(f"{self._key(channel_id)}:error", error.model_dump_json(), ex=ERROR_TTL_S)

    async def delete(self, channel_id: int) -> None:
        await self._redis.delete(self._key(channel_id))

    async def read(self, channel_id: int, enabled: bool) -> ChannelStatus:
        """What an operator should see: disabled wins, a missing entry reads as disconnected."""
        status = await self._read(channel_id, enabled)
        raw = await self._redis.get(f"{self._key(channel_id)}:error")
        if raw:
            error = ReportedError.model_validate_json(raw)
            if status.last_error_at is None or error.at > status.last_error_at:
                message = f"{error.source}: {error.message}"
                return status.model_copy(update={"last_error": message, "last_error_at": error.at})
        return status

    async def _read(self, channel_id: int, enabled: bool) -> ChannelStatus:
        status = await self.get(channel_id)
        if not enabled:
            base = status.model_dump() if status else {"channel_id": channel_id}
            return ChannelStatus.model_validate({**base, "state": ChannelState.DISABLED})
        if status is None:
            return ChannelStatus(channel_id=channel_id, state=ChannelState.DISCONNECTED)
        return status
