"""Identity mappers for real: ldap against slapd, http against a small service, static, auto."""

from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.db.models import Channel, ImIdentity, User
from imgate_common.messages import Notice, RunRequest
from imgate_common.platform_config import parse_user_mapping
from imgate_common.secrets import SecretBox
from imgate_common.status import ChannelStatusStore
from imgate_router.service import InboundRouter
from tests.router.conftest import (
    LDAP_ADMIN,
    LDAP_BASE,
    LDAP_PASSWORD,
    IdentityService,
    Published,
    Slapd,
    inbound,
)
from tests.support.openai_stub import free_port


async def set_mapping(
    sessions: async_sessionmaker[AsyncSession],
    channel_id: int,
    router: InboundRouter,
    mapping: dict[str, Any],
) -> None:
    """Store a mapping the way admin-api does: secret fields encrypted apart, and the routers
    told (its change notice) to forget what they cached."""
    public, secrets = parse_user_mapping(mapping, {}).split()
    box: SecretBox = router._users._box
    async with sessions() as session:
        channel = await session.get(Channel, channel_id)
        assert channel is not None
        channel.user_mapping = public
        channel.user_mapping_secrets_enc = box.encrypt_json(secrets) if secrets else None
        session.add(channel)
        await session.commit()
    router.caches.clear()


def ldap_mapping(url: str, **overrides: Any) -> dict[str, Any]:
    return {
        "mode": "ldap",
        "url": url,
        "bind_dn": LDAP_ADMIN,
        "bind_password": LDAP_PASSWORD,
        "base_dn": LDAP_BASE,
        "user_filter": "(employeeNumber={employee_id})",
        **overrides,
    }


async def users(sessions: async_sessionmaker[AsyncSession]) -> list[User]:
    async with sessions() as session:
        return list((await session.exec(select(User))).all())


async def test_ldap_maps_the_sender_to_the_directory_person(
    router: InboundRouter,
    published: Published,
    sessions: async_sessionmaker[AsyncSession],
    channel_id: int,
    slapd: Slapd,
) -> None:
    await set_mapping(sessions, channel_id, router, ldap_mapping(slapd.url))
    await router.handle(inbound(channel_id, "l1", "hello"))
    [user] = await users(sessions)
    assert (user.username, user.email, user.display_name, user.auth_source) == (
        "zhangsan",
        "zhangsan@example.com",
        "Zhang San",
        "ldap",
    )
    [run] = published.of(RunRequest)
    assert run.user_id == user.id


async def test_ldap_links_to_an_existing_account_of_that_person(
    router: InboundRouter,
    published: Published,
    sessions: async_sessionmaker[AsyncSession],
    channel_id: int,
    slapd: Slapd,
) -> None:
    async with sessions() as session:
        session.add(User(username="zhangsan", auth_source="ldap", email="zhangsan@example.com"))
        await session.commit()
    await set_mapping(sessions, channel_id, router, ldap_mapping(slapd.url))
    await router.handle(inbound(channel_id, "l2", "hello"))
    [user] = await users(sessions)
    async with sessions() as session:
        identity = (await session.exec(select(ImIdentity))).one()
    assert identity.user_id == user.id and identity.platform_user_id == "manager4352"


@pytest.mark.parametrize("fallback", [False, True])
async def test_ldap_nobody_follows_the_channel_policy(
    router: InboundRouter,
    published: Published,
    sessions: async_sessionmaker[AsyncSession],
    channel_id: int,
    slapd: Slapd,
    fallback: bool,
) -> None:
    mapping = ldap_mapping(slapd.url, user_filter="(mobile={employee_id})", fallback_to_auto=fallback)
    await set_mapping(sessions, channel_id, router, mapping)
    await router.handle(inbound(channel_id, "l3", "hello"))
    if fallback:
        [user] = await users(sessions)
        assert user.auth_source == "dingtalk" and len(published.of(RunRequest)) == 1
    else:
        assert await users(sessions) == [] and published.of(RunRequest) == []
        [notice] = published.of(Notice)
        assert "注册" in notice.text and "管理员" in notice.text


async def test_ldap_filter_values_are_escaped(
    router: InboundRouter,
    published: Published,
    sessions: async_sessionmaker[AsyncSession],
    channel_id: int,
    slapd: Slapd,
) -> None:
    await set_mapping(sessions, channel_id, router, ldap_mapping(slapd.url, fallback_to_auto=False))
    message = inbound(channel_id, "l4", "hello")
    evil = message.model_copy(
        update={"sender": message.sender.model_copy(update={"employee_id": "*)(uid=*"})}
    )
    await router.handle(evil)
    assert await users(sessions) == [], "an injected filter must not match everyone"


async def test_directory_down_answers_the_user_and_shows_in_channel_status(
    router: InboundRouter,
    published: Published,
    sessions: async_sessionmaker[AsyncSession],
    channel_id: int,
    redis_client: Redis,
    key_prefix: str,
) -> None:
    await set_mapping(sessions, channel_id, router, ldap_mapping(f"ldap://127.0.0.1:{free_port()}"))
    await router.handle(inbound(channel_id, "l5", "hello"))
    [notice] = published.of(Notice)
    assert "身份服务不可用" in notice.text
    assert published.of(RunRequest) == []
    status = await ChannelStatusStore(redis_client, key_prefix).read(channel_id, enabled=True)
    assert status.last_error and status.last_error.startswith("identity: directory unavailable")
    assert LDAP_PASSWORD not in status.last_error


async def test_http_mapper_posts_the_identity_and_caches_the_answer(
    router: InboundRouter,
    published: Published,
    sessions: async_sessionmaker[AsyncSession],
    channel_id: int,
    identity_service: IdentityService,
) -> None:
    mapping = {"mode": "http", "url": identity_service.url, "api_key": "erp-key"}
    await set_mapping(sessions, channel_id, router, mapping)
    before = len(identity_service.requests)
    await router.handle(inbound(channel_id, "h1", "one"))
    await router.handle(inbound(channel_id, "h2", "two"))
    assert len(identity_service.requests) == before + 1, "the second lookup comes from the cache"
    body = identity_service.requests[-1]
    assert body["employee_id"] == "manager4352" and body["platform"] == "dingtalk"
    assert body["tenant_id"] == "dingd8e1123006514592"
    assert body["staff_id"] == body["employee_id"], "lookup services written for DingTalk still read it"
    assert identity_service.headers[-1]["authorization"] == "Bearer erp-key"
    [user] = await users(sessions)
    assert (user.username, user.email, user.auth_source) == ("zs", "zs@corp.example", "http")


@pytest.mark.parametrize(("status", "delay"), [(500, 0.0), (None, 2.0)])
async def test_http_errors_and_timeouts_are_told_to_the_user(
    router: InboundRouter,
    published: Published,
    sessions: async_sessionmaker[AsyncSession],
    channel_id: int,
    identity_service: IdentityService,
    status: int | None,
    delay: float,
) -> None:
    identity_service.status, identity_service.delay_s = status, delay
    try:
        mapping = {"mode": "http", "url": identity_service.url, "timeout_s": 0.5}
        await set_mapping(sessions, channel_id, router, mapping)
        await router.handle(inbound(channel_id, f"h-{status}", "one"))
    finally:
        identity_service.status, identity_service.delay_s = None, 0.0
    [notice] = published.of(Notice)
    assert "身份服务不可用" in notice.text and published.of(RunRequest) == []


async def test_static_mapping_answers_everyone_as_one_account(
    router: InboundRouter,
    published: Published,
    sessions: async_sessionmaker[AsyncSession],
    channel_id: int,
) -> None:
    mapping = {"mode": "static", "username": "helpdesk", "email": "helpdesk@corp.example"}
    await set_mapping(sessions, channel_id, router, mapping)
    await router.handle(inbound(channel_id, "s1", "hi"))
    await router.handle(inbound(channel_id, "s2", "hi", fixture="text_group_at"))
    [user] = await users(sessions)
    assert user.username == "helpdesk" and user.auth_source == "static"
    async with sessions() as session:
        assert len((await session.exec(select(ImIdentity))).all()) == 2
