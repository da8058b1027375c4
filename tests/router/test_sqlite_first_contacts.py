"""The embedded SQLite under a burst of first contacts routed by several processes at once.

Each router here has an engine of its own on one database file, as the router, runner and
admin-api processes of `make run` do. A transaction that read before it wrote used to fail with
`database is locked` when another process wrote in between (SQLite cannot upgrade a stale read
snapshot, and the busy timeout does not help then).
"""

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis
from sqlmodel import func, select

from imgate_common.db.engine import create_engine, session_factory
from imgate_common.db.migrate import upgrade_async
from imgate_common.db.models import Agent, Channel, ImIdentity, Message, User
from imgate_common.messages import RunRequest
from imgate_common.secrets import SecretBox
from imgate_connector.platforms.dingtalk.translate import translate
from imgate_router.service import InboundRouter
from imgate_router.settings import RouterSettings
from tests.router.conftest import FIXTURES, Published

ROUTERS = 4
NEW_USERS = 60


def first_contact(channel_id: int, n: int) -> Any:
    data: dict[str, Any] = json.loads((FIXTURES / "text_single.json").read_text())
    data.update(
        msgId=f"burst-{n}",
        senderStaffId=f"staff{n:03d}",
        senderId=f"$:LWCP_v1:$sender{n:03d}",
        senderNick=f"user {n}",
        conversationId=f"cid-burst-{n}",
        text={"content": f"hello from {n}"},
    )
    return translate(data, channel_id, None)


async def test_a_burst_of_first_contacts_on_sqlite_routes_every_message(
    tmp_path: Path, redis_client: Redis, key_prefix: str
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/embedded.db"
    await upgrade_async(url)
    engines = [create_engine(url) for _ in range(ROUTERS)]
    published = Published()
    settings = RouterSettings(redis_prefix=key_prefix, data_dir=tmp_path)

    async def cancel(run_id: str) -> None:
        raise AssertionError(f"nothing is stopped here: {run_id}")

    try:
        async with session_factory(engines[0])() as session:
            agent = Agent(name="a", provider="local")
            session.add(agent)
            await session.flush()
            channel = Channel(name="c", platform="dingtalk", default_agent_id=agent.id)
            session.add(channel)
            await session.commit()
            assert channel.id is not None
            channel_id = channel.id
        async with httpx.AsyncClient() as http:
            routers = [
                InboundRouter(
                    settings,
                    session_factory(engine),
                    redis_client,
                    published,
                    cancel,
                    http,
                    SecretBox.from_settings(settings),
                )
                for engine in engines
            ]
            results = await asyncio.gather(
                *(routers[n % ROUTERS].handle(first_contact(channel_id, n)) for n in range(NEW_USERS)),
                return_exceptions=True,
            )
        failures = [repr(r) for r in results if isinstance(r, BaseException)]
        assert failures == []
        assert len(published.of(RunRequest)) == NEW_USERS
        async with session_factory(engines[0])() as session:
            users = (await session.exec(select(func.count()).select_from(User))).one()
            identities = (await session.exec(select(func.count()).select_from(ImIdentity))).one()
            turns = (await session.exec(select(func.count()).select_from(Message))).one()
        assert (users, identities, turns) == (NEW_USERS, NEW_USERS, NEW_USERS)
    finally:
        for engine in engines:
            await engine.dispose()
