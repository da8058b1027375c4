"""What one routed message costs in database statements and Redis commands (counts, not times).

A known user's message, first delivery: one Redis script (seen + rate limits), the SQL that
stores the turn (the conversation marked active, the user's message inserted), one Redis script
admitting the run, the run published, one Redis SET marking the message seen. Channel, mapping
and identity come from memory; a change notice makes the router read them again.
"""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.db.engine import create_engine, session_factory
from imgate_common.db.migrate import upgrade_async
from imgate_common.messages import RunRequest
from imgate_common.secrets import SecretBox
from imgate_connector.platforms.dingtalk.translate import translate
from imgate_router.service import InboundRouter
from imgate_router.settings import RouterSettings
from tests.router.conftest import Published, inbound, make_channel


class Counted:
    """SQL statements run on an engine and commands sent by a Redis client, from `start()` on."""

    def __init__(self, engine: AsyncEngine, redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sql: list[str] = []
        self.redis: list[str] = []
        self._on = False

        def statement(_conn: Any, _cursor: Any, text: str, *_args: Any) -> None:
            # The transaction's own BEGIN (SQLite's BEGIN IMMEDIATE) is not a statement of ours.
            if self._on and not text.startswith("BEGIN"):
                self.sql.append(" ".join(text.split()[:3]))

        event.listen(engine.sync_engine, "before_cursor_execute", statement)
        send = redis.execute_command

        async def command(*args: Any, **options: Any) -> Any:
            if self._on:
                self.redis.append(str(args[0]).upper())
            return await send(*args, **options)

        monkeypatch.setattr(redis, "execute_command", command)

    def start(self) -> None:
        self.sql.clear()
        self.redis.clear()
        self._on = True


@pytest.fixture
async def db(any_db_url: str) -> AsyncIterator[tuple[AsyncEngine, async_sessionmaker[AsyncSession]]]:
    await upgrade_async(any_db_url)
    engine = create_engine(any_db_url, pre_ping=False)
    yield engine, session_factory(engine)
    await engine.dispose()


@pytest.fixture
async def routed(
    db: tuple[AsyncEngine, async_sessionmaker[AsyncSession]],
    redis_client: Redis,
    key_prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    published: Published,
) -> AsyncIterator[tuple[InboundRouter, Counted, Published, int]]:
    engine, sessions = db
    channel_id = await make_channel(sessions)
    settings = RouterSettings(redis_prefix=key_prefix, data_dir=tmp_path)

    async def cancel(run_id: str) -> None:
        return None

    counted = Counted(engine, redis_client, monkeypatch)
    async with httpx.AsyncClient() as http:
        box = SecretBox.from_settings(settings)
        router = InboundRouter(settings, sessions, redis_client, published, cancel, http, box)
        yield router, counted, published, channel_id


async def test_a_known_users_message_costs_two_statements_and_three_redis_commands(
    routed: tuple[InboundRouter, Counted, Published, int], finish: Any
) -> None:
    router, counted, published, channel_id = routed
    await router.handle(inbound(channel_id, "m1", "first"), redelivered=False)  # first contact
    await finish(published.of(RunRequest)[0])  # answered: the next message starts at once
    counted.start()
    await router.handle(inbound(channel_id, "m2", "again"), redelivered=False)
    assert counted.sql == ["UPDATE conversations SET", "INSERT INTO messages"]
    assert counted.redis == ["EVALSHA", "EVALSHA", "SET"]
    first, second = published.of(RunRequest)
    assert second.conversation_id == first.conversation_id and second.user_id == first.user_id


async def test_first_contact_adds_the_identity_and_the_conversation(
    routed: tuple[InboundRouter, Counted, Published, int],
) -> None:
    router, counted, published, channel_id = routed
    await router.handle(inbound(channel_id, "m0", "warm"), redelivered=False)  # scripts loaded
    other = inbound(channel_id, "m1", "hello")
    data = dict(other.raw, msgId="m1", senderStaffId="newcomer", senderId="newcomer-id")
    data["conversationId"] = "cid-newcomer"
    counted.start()
    await router.handle(translate(data, channel_id, None), redelivered=False)
    # Channel from memory; identity looked up, user and identity created (in a savepoint:
    # SAVEPOINT, the username checked, two inserts, RELEASE); no open conversation, so one is
    # made after the quick path found none; the turn stored.
    assert len(counted.sql) <= 10, counted.sql
    assert counted.redis == ["EVALSHA", "EVALSHA", "SET"]
    assert len(published.of(RunRequest)) == 2


async def test_a_redelivery_looks_for_its_stored_turn_and_a_change_notice_drops_the_caches(
    routed: tuple[InboundRouter, Counted, Published, int], finish: Any
) -> None:
    router, counted, published, channel_id = routed
    await router.handle(inbound(channel_id, "m1", "first"), redelivered=False)
    await finish(published.of(RunRequest)[0])
    counted.start()
    await router.handle(inbound(channel_id, "m2", "again"), redelivered=True)
    assert counted.sql == [
        "SELECT messages.id, messages.conversation_id,",
        "UPDATE conversations SET",
        "INSERT INTO messages",
    ]
    await finish(published.of(RunRequest)[1])
    router.caches.clear()  # what admin-api's change notice does
    counted.start()
    await router.handle(inbound(channel_id, "m3", "and again"), redelivered=False)
    assert [s.split()[0] for s in counted.sql] == ["SELECT", "SELECT", "UPDATE", "INSERT"]
    assert len(published.of(RunRequest)) == 3
