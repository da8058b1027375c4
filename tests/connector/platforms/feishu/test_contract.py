"""Feishu passes the platform contract, played against imsim's Feishu module."""

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.db.models import Channel
from imgate_common.secrets import SecretBox
from imgate_connector.health import ChannelHealth
from imgate_connector.platforms.base import PlatformAdapter
from imgate_connector.platforms.feishu.adapter import FeishuAdapter
from tests.connector.platforms.contract.cases import PlatformContract
from tests.connector.platforms.contract.driver import Answer, PlatformDriver, Sink, ignore
from tests.connector.platforms.feishu.conftest import FeishuSim, StartFeishu


def shown(item: dict[str, Any]) -> Answer:
    if item["kind"] == "card":
        return Answer(card=True, text=str(item["content"]), final=not item["streaming_mode"])
    return Answer(card=False, text=str(item["text"]), final=True)


class FeishuDriver(PlatformDriver):
    name = "feishu"

    def __init__(self, sim: FeishuSim, run_adapter: StartFeishu) -> None:
        self.sim = sim
        self._run_adapter = run_adapter
        self._adapter: FeishuAdapter | None = None

    async def start(
        self, sink: Sink = ignore, *, wait: bool = True, **settings: Any
    ) -> tuple[PlatformAdapter, ChannelHealth]:
        adapter, health = await self._run_adapter(sink, wait=wait, **settings)
        self._adapter = adapter
        return adapter, health

    async def open_connections(self) -> int:
        return len(await self.sim.open_connections())

    async def drop_connection(self) -> None:
        await self.sim.post("connections/drop")

    async def user_sends(self, text: str, sender: str = "pat") -> str:
        return str((await self.sim.send(text, sender_id=sender))["message_id"])

    async def user_sends_unreadable(self, sender: str = "pat") -> str:
        # A message event whose content is not JSON, from a person in their chat with the bot.
        ids = await self.sim.get(f"users/{sender}")
        event = {
            "schema": "2.0",
            "header": {"event_id": uuid.uuid4().hex, "event_type": "im.message.receive_v1"},
            "event": {
                "sender": {"sender_id": {"open_id": ids["open_id"]}, "sender_type": "user"},
                "message": {
                    "message_id": f"om_{uuid.uuid4().hex}",
                    "chat_id": ids["p2p_chat_id"],
                    "chat_type": "p2p",
                    "message_type": "text",
                    "content": "{not json",
                },
            },
        }
        sent = await self.sim.post("messages", {"raw_event": event, "sender_id": sender})
        return str(sent["message_id"])

    async def acked(self, msg_id: str) -> int:
        return len([a for a in (await self.sim.event(msg_id))["acks"] if a["code"] == 200])

    async def deliveries(self, msg_id: str) -> int:
        return len((await self.sim.event(msg_id))["deliveries"])

    async def redeliver(self, msg_id: str) -> None:
        await self.sim.post(f"events/{msg_id}/redeliver")

    async def answers_to(self, sender: str) -> list[Answer]:
        chats = [c for c in await self.sim.get("chats") if c.get("staff_id") == sender]
        found = []
        for chat in chats:
            items = (await self.sim.get(f"chats/{chat['conversation_id']}"))["items"]
            found += [shown(i) for i in items if i["kind"] != "user"]
        return found

    async def answers(self, msg_id: str) -> list[Answer]:
        return [shown(a) for a in (await self.sim.event(msg_id))["answers"]]

    async def card(self, card_id: str) -> Answer | None:
        assert self._adapter is not None
        entity, _ = await self._adapter.surface.records.get(card_id)
        if entity is None:
            return None
        try:
            found = await self.sim.get(f"cards/{entity}")
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 404:
                return None
            raise
        return shown({"kind": "card", **found})

    async def cards_created(self) -> int:
        return len(await self.sim.get("cards"))

    async def set_cards_down(self, down: bool) -> None:
        await self.sim.faults(cards_down=down)

    async def add_channel(
        self, db: async_sessionmaker[AsyncSession], box: SecretBox, channel_id: int
    ) -> None:
        row = Channel(
            id=channel_id,
            name=f"ch-{channel_id}",
            platform="feishu",
            config={"app_id": self.sim.app, "domain": self.sim.base},
            secrets_enc=box.encrypt_json({"app_secret": self.sim.secret}),
            enabled=True,
        )
        async with db() as session:
            session.add(row)
            await session.commit()


@pytest.fixture
def driver(feishu: FeishuSim, run_feishu: StartFeishu) -> FeishuDriver:
    return FeishuDriver(feishu, run_feishu)


class TestFeishuContract(PlatformContract):
    pass
