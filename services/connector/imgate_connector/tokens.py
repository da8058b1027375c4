"""Access tokens of the platform apps this process talks to, one per app, shared by its channels.

A token is fetched when there is none, when it is within `margin_s` of its stated expiry, or when
a call was refused with it (`stale`); one fetch at a time per app, so channels of one app that
find it stale together make one request.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

# (token, seconds it is valid for), as the platform answers.
FetchToken = Callable[[], Awaitable[tuple[str, float]]]


@dataclass
class AccessToken:
    value: str | None = None
    expires: float = 0.0  # monotonic: when it is to be replaced
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def get(self, fetch: FetchToken, *, margin_s: float, stale: str | None = None) -> str:
        """The app's token; `stale` is one a call was refused with: replace it."""
        async with self.lock:
            fresh = self.value is not None and time.monotonic() < self.expires
            if not fresh or (stale is not None and self.value == stale):
                value, ttl = await fetch()
                self.value = value
                # Refreshed `margin_s` early; a short-lived token at half its life.
                self.expires = time.monotonic() + max(ttl - margin_s, ttl / 2)
            assert self.value is not None
            return self.value


class AccessTokens:
    """The tokens of every app, keyed by (where its API is, the app's id)."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str], AccessToken] = {}

    def of(self, endpoint: str, app: str) -> AccessToken:
        return self._tokens.setdefault((endpoint, app), AccessToken())
