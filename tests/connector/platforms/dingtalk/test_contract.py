"""DingTalk passes the platform contract, played against imsim's DingTalk module."""

import json
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.secrets import SecretBox
from imgate_connector.health import ChannelHealth
from imgate_connector.platforms.base import PlatformAdapter
from tests.connector.conftest import Start
from tests.connector.platforms.contract.cases import PlatformContract
from tests.connector.platforms.contract.driver import Answer, PlatformDriver, Sink, ignore
from tests.connector.sim import Sim, final
from tests.connector.stack import add_channel


def shown(item: dict[str, Any]) -> Answer:
    card = item["kind"] == "card"
    return Answer(card=card, text=str(item["content"] if card else item["text"]), final=final(item))


class DingTalkDriver(PlatformDriver):
    name = "dingtalk"

    def __init__(self, sim: Sim, run_adapter: Start) -> None:
        self.sim = sim
        self._run_adapter = run_adapter

    async def start(
        self, sink: Sink = ignore, *, wait: bool = True, **settings: Any
    ) -> tuple[PlatformAdapter, ChannelHealth]:
        return await self._run_adapter(sink, wait=wait, **settings)

    async def open_connections(self) -> int:
        return len(await self.sim.open_connections())

    async def drop_connection(self) -> None:
        await self.sim.post("connections/drop")

    async def user_sends(self, text: str, sender: str = "pat") -> str:
        return str((await self.sim.send(text, sender_staff_id=sender))["msg_id"])

    async def user_sends_unreadable(self, sender: str = "pat") -> str:
        # A bot-message frame without the message's id: nothing to publish it under.
        payload = {"msgtype": "text", "text": {"content": "hi"}, "senderStaffId": sender}
        return str((await self.sim.send(raw_data=json.dumps(payload)))["msg_id"])

    async def acked(self, msg_id: str) -> int:
        return (await self.sim.acks_for(msg_id)).count(200)

    async def deliveries(self, msg_id: str) -> int:
        return len([d for d in await self.sim.get("deliveries") if d["msg_id"] == msg_id])

    async def redeliver(self, msg_id: str) -> None:
        await self.sim.post(f"messages/{quote(msg_id, safe='')}/redeliver")

    async def answers_to(self, sender: str) -> list[Answer]:
        chats = [c for c in await self.sim.get("conversations") if c["staff_id"] == sender]
        return [shown(i) for c in chats for i in c["items"] if i["kind"] != "user"]

    async def answers(self, msg_id: str) -> list[Answer]:
        return [shown(a) for a in await self.sim.answers(msg_id)]

    async def card(self, card_id: str) -> Answer | None:
        try:
            found = await self.sim.get(f"cards/{quote(card_id, safe='')}")
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 404:
                return None
            raise
        return shown({"kind": "card", **found})

    async def cards_created(self) -> int:
        return len(await self.sim.get("cards"))

    async def set_cards_down(self, down: bool) -> None:
        await self.sim.faults(card_down=down)

    async def add_channel(
        self, db: async_sessionmaker[AsyncSession], box: SecretBox, channel_id: int
    ) -> None:
        await add_channel(db, box, channel_id, self.sim.app, self.sim.secret, endpoint=self.sim.base)


@pytest.fixture
async def sim(imsim: str, http: httpx.AsyncClient) -> Sim:
    # No redelivery of its own: the contract redelivers when it means to.
    return await Sim.create(imsim, http, redeliver_after=60, disconnect_grace=1)


@pytest.fixture
def driver(sim: Sim, run_adapter: Start) -> DingTalkDriver:
    return DingTalkDriver(sim, run_adapter)


class TestDingTalkContract(PlatformContract):
    pass
