"""Process-wide resources the channels of one connector share, created in its lifespan."""

from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from redis.asyncio import Redis

from imgate_connector.media import AgentVision, MediaStore

T = TypeVar("T")


@dataclass
class ConnectorResources:
    http: httpx.AsyncClient
    redis: Redis
    redis_prefix: str
    media: MediaStore | None = None  # None: media are not fetched (attachments keep their codes)
    # Whether a channel's agent takes pictures (None: assume it does; pictures are fetched).
    vision: AgentVision | None = None
    _shared: dict[type[Any], Any] = field(default_factory=dict)

    def shared(self, kind: type[T]) -> T:
        """One instance of `kind` per process (e.g. a platform's access-token cache)."""
        found = self._shared.get(kind)
        if found is None:
            found = self._shared[kind] = kind()
        return found  # type: ignore[no-any-return]
