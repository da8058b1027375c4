"""Feishu adapters against imsim's Feishu module, for the contract and the adapter tests."""

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from redis.asyncio import Redis

from imgate_connector.health import ChannelHealth
from imgate_connector.platforms.feishu.adapter import FeishuAdapter
from tests.connector.conftest import adapters_of
from tests.connector.sim import Sim

StartFeishu = Callable[..., Awaitable[tuple[FeishuAdapter, ChannelHealth]]]


class FeishuSim(Sim):
    """One imsim Feishu app (`/sim/feishu/apps/<app_id>/…`), played from the user's side."""

    @classmethod
    async def create(
        cls, base: str, client: httpx.AsyncClient, prefix: str = "cli", **knobs: Any
    ) -> "FeishuSim":
        app = f"{prefix}_{uuid.uuid4().hex[:12]}"
        response = await client.post(
            f"{base}/sim/feishu/apps", json={"app_id": app, "app_secret": "s3cret", **knobs}
        )
        response.raise_for_status()
        return cls(base, client, app)

    def url(self, what: str) -> str:
        return f"{self.base}/sim/feishu/apps/{self.app}/{what}"

    async def patch(self, body: dict[str, Any]) -> None:
        response = await self.client.patch(f"{self.base}/sim/feishu/apps/{self.app}", json=body)
        response.raise_for_status()

    async def event(self, message_id: str) -> dict[str, Any]:
        return dict(await self.get(f"events/{quote(message_id, safe='')}"))


@pytest.fixture
async def feishu(imsim: str, http: httpx.AsyncClient) -> FeishuSim:
    # Redelivery only when a test asks for it (an hour is beyond any test).
    return await FeishuSim.create(imsim, http, ack_wait=60, redeliver_schedule=[3600])


@pytest.fixture
async def run_feishu(feishu: FeishuSim, redis_client: Redis, key_prefix: str) -> AsyncIterator[StartFeishu]:
    """Start Feishu adapters on `feishu`'s app; stopped afterwards."""
    config = {"app_id": feishu.app, "app_secret": feishu.secret, "domain": feishu.base}
    async with adapters_of(FeishuAdapter, config, redis_client, key_prefix, first_id=910_000) as start:
        yield start
