"""The in-memory configuration cache: entries expire, the oldest go first, a notice empties all."""

import asyncio

import pytest
from nats.aio.client import Client as NATS

from imgate_common.bus import CONFIG_CHANGED
from imgate_common.config_cache import ConfigCache, ConfigCaches, announce_change
from imgate_common.messages import ConfigKind


def test_entries_expire_and_the_oldest_go_first(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr("imgate_common.config_cache.time.monotonic", lambda: now[0])
    cache: ConfigCache[int, str] = ConfigCache(ttl_s=30, max_entries=2)
    cache.put(1, "one")
    cache.put(2, "two")
    cache.put(3, "three")
    assert (cache.get(1), cache.get(2), cache.get(3)) == (None, "two", "three")
    now[0] += 30
    assert cache.get(2) is None and len(cache) == 1


async def test_a_change_notice_empties_every_cache(nats_client: NATS) -> None:
    channels: ConfigCache[int, str] = ConfigCache()
    agents: ConfigCache[int, str] = ConfigCache()
    channels.put(1, "channel")
    agents.put(1, "agent")
    caches = ConfigCaches(channels, agents)
    await nats_client.subscribe(CONFIG_CHANGED, cb=caches.on_notice)
    await nats_client.flush()
    await announce_change(nats_client, ConfigKind.CHANNEL, 1)
    for _ in range(100):
        if not len(channels) and not len(agents):
            break
        await asyncio.sleep(0.01)
    assert (channels.get(1), agents.get(1)) == (None, None)
