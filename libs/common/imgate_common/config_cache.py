"""Configuration rows (channels, agents, identity links) kept in a service's memory.

Every routed message and every run read the same few rows; reading them from the database each
time cost the router and the runner a round trip apiece per message. The admin-api announces
each change of a channel, an agent, a user's identities on `CONFIG_CHANGED` (core NATS), and
every router and runner empties its caches when it hears one. Core NATS may lose a notice (a
service reconnecting at that moment), so an entry is also forgotten `ttl_s` after it was read.
"""

import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, Generic, TypeVar

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from imgate_common.bus import CONFIG_CHANGED
from imgate_common.messages import ConfigChanged, ConfigKind

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# How long a row read from the database is used without asking again, if no notice came: the
# longest an administrator's change can take to reach a service whose notice was lost.
DEFAULT_TTL_S = 30.0
DEFAULT_MAX_ENTRIES = 10_000


class ConfigCache(Generic[K, V]):
    """A bounded map whose entries expire; the least recently stored goes first when full."""

    def __init__(self, ttl_s: float = DEFAULT_TTL_S, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self._ttl = ttl_s
        self._max = max(1, max_entries)
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if time.monotonic() >= expires:
            del self._entries[key]
            return None
        return value

    def put(self, key: K, value: V) -> None:
        if self._ttl <= 0:
            return
        self._entries[key] = (time.monotonic() + self._ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


async def announce_change(nc: NATS, kind: ConfigKind, record_id: int | None = None) -> None:
    """Tell every router and runner to read configuration afresh (best effort: core NATS)."""
    await nc.publish(CONFIG_CHANGED, ConfigChanged(kind=kind, id=record_id).model_dump_json().encode())


class ConfigCaches:
    """A service's caches, emptied together on every change notice (changes are rare: dropping
    everything is simpler than knowing which row each cache derived from)."""

    def __init__(self, *caches: ConfigCache[Any, Any]) -> None:
        self._caches = caches

    def clear(self) -> None:
        for cache in self._caches:
            cache.clear()

    async def on_notice(self, _msg: Msg) -> None:
        """The nats-py callback for `CONFIG_CHANGED`; what changed does not matter."""
        self.clear()
