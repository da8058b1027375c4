"""The user's side of imsim, and polling helpers, for the connector's tests."""

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import httpx


async def until(check: Callable[[], Awaitable[bool]], within: float = 10) -> float:
    """Poll `check` until it holds (at most `within` seconds); returns the seconds it took."""
    start = time.monotonic()
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 (polls another process)
            await asyncio.sleep(0.05)
    return time.monotonic() - start


class Sim:
    """One imsim app, played from the user's side."""

    def __init__(self, base: str, client: httpx.AsyncClient, app: str, secret: str = "s3cret") -> None:
        self.base, self.client, self.app, self.secret = base, client, app, secret

    @classmethod
    async def create(cls, base: str, client: httpx.AsyncClient, prefix: str = "app", **knobs: Any) -> "Sim":
        app = f"{prefix}-{uuid.uuid4().hex[:8]}"
        body = {"client_id": app, "client_secret": "s3cret", **knobs}
        response = await client.post(f"{base}/sim/apps", json=body)
        response.raise_for_status()
        return cls(base, client, app)

    def url(self, what: str) -> str:
        return f"{self.base}/sim/apps/{self.app}/{what}"

    async def get(self, what: str) -> Any:
        response = await self.client.get(self.url(what))
        response.raise_for_status()
        return response.json()

    async def post(self, what: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        response = await self.client.post(self.url(what), json=body or {})
        response.raise_for_status()
        return dict(response.json())

    async def patch(self, body: dict[str, Any]) -> None:
        response = await self.client.patch(f"{self.base}/sim/apps/{self.app}", json=body)
        response.raise_for_status()

    async def faults(self, **config: Any) -> None:
        response = await self.client.patch(self.url("faults/config"), json=config)
        response.raise_for_status()

    async def send(self, text: str = "hello", **body: Any) -> dict[str, Any]:
        return await self.post("messages", {"text": text, **body})

    async def message(self, msg_id: str) -> dict[str, Any]:
        return dict(await self.get(f"messages/{quote(msg_id, safe='')}"))

    async def acks_for(self, msg_id: str) -> list[int]:
        return [a["code"] for a in await self.get("acks") if a["msg_id"] == msg_id]

    async def open_connections(self) -> list[dict[str, Any]]:
        return [c for c in await self.get("connections") if c["open"]]

    async def counters(self) -> dict[str, Any]:
        return dict(await self.get("counters"))

    async def answers(self, msg_id: str) -> list[dict[str, Any]]:
        return list((await self.message(msg_id))["answers"])


def final(answer: dict[str, Any]) -> bool:
    """A bot answer the user sees as complete: any plain message, or a finalized card."""
    if answer["kind"] != "card":
        return True
    return bool(answer["finalized"]) and answer["flow_status"] in ("3", "5")
