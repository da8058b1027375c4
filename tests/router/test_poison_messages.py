"""Messages that can never succeed as they are, on PostgreSQL (which refuses what SQLite takes):
stored cleaned, or ended at once as configuration mistakes, and never holding a conversation."""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.consume import classify
from imgate_common.conversation_queue import ConversationQueue
from imgate_common.db.engine import create_engine, session_factory
from imgate_common.db.migrate import upgrade_async
from imgate_common.db.models import Channel, Message, User
from imgate_common.errors import ConfigurationError, FailureCategory
from imgate_common.messages import RunFailed, RunRequest
from imgate_common.secrets import SecretBox
from imgate_common.status import ChannelStatusStore
from imgate_common.wording import say
from imgate_router.service import InboundRouter, run_id_for
from imgate_router.settings import RouterSettings
from tests.router.conftest import IdentityService, Published, inbound, make_channel
from tests.router.test_identity_mappers import ldap_mapping, set_mapping
from tests.support.databases import postgres_database


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


@pytest.fixture
async def pg_sessions(pg_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    await upgrade_async(pg_url)
    engine = create_engine(pg_url)
    yield session_factory(engine)
    await engine.dispose()


@pytest.fixture
async def pg_channel(pg_sessions: async_sessionmaker[AsyncSession]) -> int:
    return await make_channel(pg_sessions, language="en-US")


@pytest.fixture
def pg_router(
    pg_sessions: async_sessionmaker[AsyncSession],
    redis_client: Redis,
    key_prefix: str,
    published: Published,
    tmp_path: Path,
    http_client: httpx.AsyncClient,
) -> InboundRouter:
    async def cancel(run_id: str) -> None:
        return None

    settings = RouterSettings(redis_prefix=key_prefix, data_dir=tmp_path)
    return InboundRouter(
        settings, pg_sessions, redis_client, published, cancel, http_client, SecretBox.from_settings(settings)
    )


async def test_a_text_with_a_nul_byte_is_stored_without_it(
    pg_router: InboundRouter,
    published: Published,
    pg_sessions: async_sessionmaker[AsyncSession],
    pg_channel: int,
) -> None:
    """A small text file with a NUL in it, inlined into the message by the connector."""
    await pg_router.handle(inbound(pg_channel, "nul1", "report.txt:\nab\x00cd"))
    [run] = published.of(RunRequest)
    async with pg_sessions() as session:
        stored = (await session.exec(select(Message))).one()
    assert stored.content == "report.txt:\nabcd" and stored.run_id == run.run_id


async def test_an_erp_display_name_longer_than_its_column_is_cut(
    pg_router: InboundRouter,
    published: Published,
    pg_sessions: async_sessionmaker[AsyncSession],
    pg_channel: int,
    identity_service: IdentityService,
) -> None:
    await set_mapping(pg_sessions, pg_channel, pg_router, {"mode": "http", "url": identity_service.url})
    identity_service.answers.append({"username": "long", "display_name": "名" * 500, "email": "l@corp"})
    await pg_router.handle(inbound(pg_channel, "long1"))
    assert len(published.of(RunRequest)) == 1
    async with pg_sessions() as session:
        user = (await session.exec(select(User))).one()
    assert user.display_name == "名" * 200


@pytest.mark.parametrize("answer", [None, [], "zs"])
async def test_an_erp_answer_of_the_wrong_shape_is_a_configuration_error(
    pg_router: InboundRouter,
    published: Published,
    pg_sessions: async_sessionmaker[AsyncSession],
    pg_channel: int,
    identity_service: IdentityService,
    answer: Any,
) -> None:
    await set_mapping(pg_sessions, pg_channel, pg_router, {"mode": "http", "url": identity_service.url})
    identity_service.answers.append(answer)
    with pytest.raises(ConfigurationError, match="not a JSON object") as raised:
        await pg_router.handle(inbound(pg_channel, "shape1"))
    failure = classify(raised.value)
    assert failure.permanent and failure.category == FailureCategory.MISCONFIGURED
    assert published == []


async def test_an_ldap_filter_with_an_unknown_placeholder_is_a_configuration_error(
    pg_router: InboundRouter, pg_sessions: async_sessionmaker[AsyncSession], pg_channel: int
) -> None:
    mapping = ldap_mapping("ldap://127.0.0.1:9", user_filter="(uid={employee_number})")
    await set_mapping(pg_sessions, pg_channel, pg_router, mapping)
    with pytest.raises(ConfigurationError, match="employee_number") as raised:
        await pg_router.handle(inbound(pg_channel, "ldap1"))
    assert classify(raised.value).permanent


async def test_giving_up_ends_the_card_shows_the_error_and_frees_the_conversation(
    pg_router: InboundRouter,
    published: Published,
    pg_sessions: async_sessionmaker[AsyncSession],
    pg_channel: int,
    redis_client: Redis,
    key_prefix: str,
) -> None:
    """A message admitted as its conversation's run, then given up on (say its run request
    could not be published through every try): the next message must not wait behind it."""
    await pg_router.handle(inbound(pg_channel, "g1", "first"))
    [first] = published.of(RunRequest)
    published.clear()
    await pg_router.handle(inbound(pg_channel, "g2", "second"))
    assert published.of(RunRequest) == [], "waits behind the first"
    failure = classify(ConfigurationError("LDAP user_filter is broken"))
    await pg_router.give_up(inbound(pg_channel, "g1", "first"), failure)
    [failed] = published.of(RunFailed)
    assert failed.run_id == first.run_id and failed.category == FailureCategory.MISCONFIGURED
    assert failed.text == say("failure.misconfigured", "en-US")
    [following] = published.of(RunRequest)
    assert following.run_id == run_id_for(inbound(pg_channel, "g2"))
    queue = ConversationQueue(redis_client, key_prefix, active_ttl_s=60)
    assert await queue.active(first.conversation_id) == following.run_id
    async with pg_sessions() as session:
        channel = await session.get(Channel, pg_channel)
    assert channel is not None
    status = await ChannelStatusStore(redis_client, key_prefix).read(pg_channel, enabled=True)
    assert status.last_error == "router: configuration: LDAP user_filter is broken"
