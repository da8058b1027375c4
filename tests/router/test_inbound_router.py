"""The router against real Redis and a migrated database; the bus publish is captured."""

from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.bus import REPLIES_STREAM, RUNS_STREAM
from imgate_common.db.models import Channel, Conversation, ImIdentity, Message, User
from imgate_common.errors import FailureCategory
from imgate_common.messages import Notice, RunQueued, RunRequest
from imgate_common.wording import failure_sentence
from imgate_connector.platforms.dingtalk.translate import translate
from imgate_router.service import InboundRouter
from tests.router.conftest import Published, inbound


async def test_first_contact_creates_the_user_and_requests_a_run(
    router: InboundRouter, published: Published, sessions: async_sessionmaker[AsyncSession], channel_id: int
) -> None:
    await router.handle(inbound(channel_id, "m1", "What can you do?"))
    [request] = published.of(RunRequest)
    subject, stream, _, msg_id = published[0]
    assert (subject, stream, msg_id) == (f"agent.run.{channel_id}", RUNS_STREAM, request.run_id)
    assert request.text == "What can you do?" and request.agent_id is not None
    async with sessions() as session:
        user = (await session.exec(select(User))).one()
        identity = (await session.exec(select(ImIdentity))).one()
        stored = (await session.exec(select(Message))).one()
    assert (user.username, user.email, user.auth_source) == (
        "manager4352",
        "manager4352@im-platform.com",
        "dingtalk",
    )
    assert identity.user_id == user.id and identity.tenant_id == "dingd8e1123006514592"
    assert (stored.role, stored.content, stored.run_id) == ("user", "What can you do?", request.run_id)


async def test_a_redelivered_message_is_routed_once(
    router: InboundRouter, published: Published, channel_id: int
) -> None:
    await router.handle(inbound(channel_id, "m1"))
    await router.handle(inbound(channel_id, "m1"))
    assert len(published.of(RunRequest)) == 1


async def test_second_message_continues_and_new_starts_fresh(
    router: InboundRouter,
    published: Published,
    channel_id: int,
    sessions: async_sessionmaker[AsyncSession],
    finish: Any,
) -> None:
    await router.handle(inbound(channel_id, "m1", "one"))
    await finish(published.of(RunRequest)[0])
    await router.handle(inbound(channel_id, "m2", "two"))
    await finish(published.of(RunRequest)[1])
    await router.handle(inbound(channel_id, "m3", "/new"))
    await router.handle(inbound(channel_id, "m4", "three"))
    runs = published.of(RunRequest)
    assert runs[0].conversation_id == runs[1].conversation_id
    assert runs[2].conversation_id != runs[1].conversation_id
    [notice] = published.of(Notice)
    assert notice.text == "已开始新对话。有什么可以帮助您的？"
    assert any(stream == REPLIES_STREAM for _, stream, m, _ in published if m is notice)
    async with sessions() as session:
        closed = (
            await session.exec(select(Conversation).where(Conversation.id == runs[0].conversation_id))
        ).one()
    assert closed.closed_at is not None


async def test_unsupported_message_gets_a_clear_reply_and_no_run(
    router: InboundRouter, published: Published, channel_id: int
) -> None:
    unknown = inbound(channel_id, "p1").raw | {"msgtype": "hologram", "content": {"x": 1}}
    unknown.pop("text")
    await router.handle(translate(unknown, channel_id, None))
    assert published.of(RunRequest) == []
    [notice] = published.of(Notice)
    assert notice.text == failure_sentence(FailureCategory.UNSUPPORTED_MESSAGE, "zh-CN")


async def test_taken_username_gets_a_stable_different_name_never_the_strangers_account(
    router: InboundRouter, sessions: async_sessionmaker[AsyncSession], channel_id: int
) -> None:
    async with sessions() as session:
        session.add(User(username="manager4352", auth_source="ldap", email="boss@corp.example"))
        await session.commit()
    await router.handle(inbound(channel_id, "m1"))
    async with sessions() as session:
        users = (await session.exec(select(User).order_by(User.id))).all()
        identity = (await session.exec(select(ImIdentity))).one()
    assert len(users) == 2
    assert identity.user_id == users[1].id != users[0].id
    assert users[1].username.startswith("manager4352.dingtalk.")


async def test_group_scope_user_gives_members_their_own_conversation(
    router: InboundRouter, published: Published, sessions: async_sessionmaker[AsyncSession], channel_id: int
) -> None:
    async with sessions() as session:
        channel = await session.get(Channel, channel_id)
        assert channel is not None
        channel.session_scope = "user"
        session.add(channel)
        await session.commit()
    router.caches.clear()  # as admin-api's change notice does
    first = inbound(channel_id, "g1", fixture="text_group_at")
    data = dict(first.raw, msgId="g2", senderStaffId="other", senderId="other-id")
    await router.handle(first)
    await router.handle(translate(data, channel_id, None))
    a, b = published.of(RunRequest)
    assert a.conversation_id != b.conversation_id


async def test_stop_cancels_the_unanswered_run_of_this_conversation(
    router: InboundRouter,
    published: Published,
    cancelled: list[str],
    channel_id: int,
    finish: Any,
) -> None:
    await router.handle(inbound(channel_id, "m1", "write a long story"))
    [run] = published.of(RunRequest)
    await router.handle(inbound(channel_id, "m2", "/stop"))
    assert cancelled == [run.run_id]
    await finish(run)
    await router.handle(inbound(channel_id, "m3", "/stop"))
    assert cancelled == [run.run_id], "a finished run is not cancelled again"
    [notice] = published.of(Notice)
    assert notice.text == "没有正在生成的回答。"


async def test_quick_messages_wait_in_order_behind_the_running_answer(
    router: InboundRouter, published: Published, channel_id: int, finish: Any
) -> None:
    for i in range(3):
        await router.handle(inbound(channel_id, f"q{i}", f"message {i}"))
    [first] = published.of(RunRequest)
    assert first.text == "message 0"
    assert [q.position for q in published.of(RunQueued)] == [1, 2]
    await finish(first)
    await finish(published.of(RunRequest)[1])
    await finish(published.of(RunRequest)[2])
    assert [r.text for r in published.of(RunRequest)] == ["message 0", "message 1", "message 2"]


async def test_a_full_queue_asks_the_user_to_wait_and_keeps_nothing(
    router: InboundRouter, published: Published, channel_id: int, sessions: async_sessionmaker[AsyncSession]
) -> None:
    router._settings.queue_max_depth = 1
    for i in range(3):
        await router.handle(inbound(channel_id, f"f{i}", f"message {i}"))
    [notice] = published.of(Notice)
    assert "排队" in notice.text
    async with sessions() as session:
        texts = [m.content for m in (await session.exec(select(Message))).all()]
    assert texts == ["message 0", "message 1"], "the refused message is not in the history"


async def test_status_reports_agent_conversation_and_queue(
    router: InboundRouter, published: Published, channel_id: int
) -> None:
    await router.handle(inbound(channel_id, "s1", "first"))
    await router.handle(inbound(channel_id, "s2", "second"))
    await router.handle(inbound(channel_id, "s3", "/STATUS"))
    [notice] = published.of(Notice)
    assert "智能体：a" in notice.text and "local/" in notice.text
    assert "2 轮" in notice.text and "排队中的消息：1 条" in notice.text


async def test_help_and_commands_after_a_group_mention(
    router: InboundRouter, published: Published, channel_id: int
) -> None:
    await router.handle(inbound(channel_id, "h1", "@机器人 /help", fixture="text_group_at"))
    await router.handle(inbound(channel_id, "h2", "@机器人 /New", fixture="text_group_at"))
    help_text, new_text = (n.text for n in published.of(Notice))
    assert "/stop" in help_text and "/status" in help_text
    assert new_text == "已开始新对话。有什么可以帮助您的？"
    assert published.of(RunRequest) == []


async def test_unknown_slash_words_go_to_the_agent(
    router: InboundRouter, published: Published, channel_id: int
) -> None:
    await router.handle(inbound(channel_id, "u1", "/translate hello"))
    [run] = published.of(RunRequest)
    assert run.text == "/translate hello"


async def test_an_idle_conversation_is_closed_and_the_user_told(
    router: InboundRouter,
    published: Published,
    channel_id: int,
    sessions: async_sessionmaker[AsyncSession],
    finish: Any,
) -> None:
    from datetime import timedelta

    from imgate_common.db.models import utcnow

    await router.handle(inbound(channel_id, "i1", "hello"))
    [first] = published.of(RunRequest)
    await finish(first)
    async with sessions() as session:
        conversation = await session.get(Conversation, first.conversation_id)
        assert conversation is not None
        conversation.last_activity_at = utcnow() - timedelta(hours=13)
        session.add(conversation)
        await session.commit()
    await router.handle(inbound(channel_id, "i2", "back again"))
    second = published.of(RunRequest)[1]
    assert second.conversation_id != first.conversation_id
    [notice] = published.of(Notice)
    assert notice.text == "距上次对话已经很久了，已为您开始新对话。"
    assert notice.run_id != second.run_id, "the notice does not take the answer's card"
