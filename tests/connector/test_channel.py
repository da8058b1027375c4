"""A channel's parts are taken apart in reverse order of making, also when its start fails."""

import asyncio
from typing import Any
from unittest.mock import AsyncMock, MagicMock

import httpx
import pytest
from redis.asyncio import Redis

from imgate_common.channels import ChannelSpec
from imgate_connector.channel import ChannelWiring
from imgate_connector.health import ChannelHealth
from imgate_connector.lease import ChannelLease
from imgate_connector.platforms.base import PlatformAdapter, ReplySurface
from imgate_connector.platforms.registry import ADAPTERS
from imgate_connector.records import ChannelRecord
from imgate_connector.rendering import CardRenderer
from imgate_connector.resources import ConnectorResources
from imgate_connector.settings import ConnectorSettings

CHANNEL_ID = 41


class PartsAdapter(PlatformAdapter):
    """Records its stop; its start fails when told to."""

    name = "parts-test"
    taken_apart: list[str]
    fail_start = False

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._surface = MagicMock(spec=ReplySurface)
        self.drained: float | None = None

    async def start(self) -> None:
        await asyncio.sleep(0.05)  # the reply consumer is under way meanwhile
        if self.fail_start:
            raise ConnectionError("the platform refused the connection")

    async def stop(self, drain_s: float = 0.0) -> None:
        self.drained = drain_s
        self.taken_apart.append("adapter")

    @property
    def surface(self) -> ReplySurface:
        return self._surface

    async def wait_connected(self, timeout_s: float) -> bool:
        return True


@pytest.fixture
async def wiring(
    redis_client: Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[ChannelWiring, list[str]]:
    taken_apart: list[str] = []
    monkeypatch.setattr(PartsAdapter, "taken_apart", taken_apart, raising=False)
    monkeypatch.setitem(ADAPTERS, PartsAdapter.name, PartsAdapter)

    async def renderer_closed(_self: CardRenderer) -> None:
        taken_apart.append("renderer")

    monkeypatch.setattr(CardRenderer, "close", renderer_closed)
    monkeypatch.setattr(ChannelHealth, "retire", lambda _self: taken_apart.append("health"))

    async def consume_forever(*_args: Any, **_kwargs: Any) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            taken_apart.append("replies")
            raise

    js = MagicMock()
    js.add_consumer = AsyncMock()
    js.pull_subscribe = consume_forever
    lease = ChannelLease(redis_client, key_prefix, "parts-owner", 5.0)
    assert await lease.acquire(CHANNEL_ID) is not None
    resources = ConnectorResources(MagicMock(spec=httpx.AsyncClient), redis_client, key_prefix)
    return ChannelWiring(ConnectorSettings(), js, lease, MagicMock(), resources, lambda: None), taken_apart


def record() -> ChannelRecord:
    spec = ChannelSpec(CHANNEL_ID, "parts", PartsAdapter.name, True, None, "conversation")
    return ChannelRecord(spec)


async def test_a_stopping_channel_goes_from_its_connection_to_its_gauge(
    wiring: tuple[ChannelWiring, list[str]],
) -> None:
    channel_wiring, taken_apart = wiring
    channel = await channel_wiring.start(record())
    assert taken_apart == []
    await channel.stop(drain_s=1.5)
    assert taken_apart == ["adapter", "replies", "renderer", "health"]
    assert isinstance(channel.adapter, PartsAdapter) and channel.adapter.drained == 1.5


async def test_a_channel_whose_start_fails_is_taken_apart_again(
    wiring: tuple[ChannelWiring, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    channel_wiring, taken_apart = wiring
    monkeypatch.setattr(PartsAdapter, "fail_start", True)
    with pytest.raises(ConnectionError):
        await channel_wiring.start(record())
    assert taken_apart == ["adapter", "replies", "renderer", "health"]
