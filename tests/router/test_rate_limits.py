"""Inbound rate limits (real Redis, shared by every replica): past a sender's or a channel's
limit a message is answered with a polite sentence and not run; `/stop` always passes."""

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.db.models import Message
from imgate_common.messages import InboundMessage, Notice, RunQueued, RunRequest
from imgate_common.wording import say
from imgate_router.rate_limit import InboundRateLimiter, Limited, RateLimits
from imgate_router.service import InboundRouter
from tests.router.conftest import Published, inbound


def from_sender(message: InboundMessage, sender: str) -> InboundMessage:
    return message.model_copy(update={"sender": message.sender.model_copy(update={"id": sender})})


@pytest.fixture
def limited_router(router: InboundRouter, redis_client: Redis, key_prefix: str) -> InboundRouter:
    """The usual router with small limits: 3 messages a sender, 5 a channel, per hour."""
    limits = RateLimits(window_s=3600, per_user=3, per_channel=5)
    router._rate = InboundRateLimiter(redis_client, key_prefix, limits)
    return router


def answered(published: Published) -> dict[str, str]:
    """Run id → what became of it: a run, queued, or the notice's text."""
    outcome: dict[str, str] = {}
    for _, _, model, _ in published:
        if isinstance(model, RunRequest):
            outcome[model.run_id] = "run"
        elif isinstance(model, RunQueued):
            outcome[model.run_id] = "queued"
        elif isinstance(model, Notice):
            outcome[model.run_id] = model.text
    return outcome


async def test_a_sender_past_the_limit_is_told_and_not_run(
    limited_router: InboundRouter,
    published: Published,
    sessions: async_sessionmaker[AsyncSession],
    channel_id: int,
    cancelled: list[str],
) -> None:
    for n in range(5):
        await limited_router.handle(inbound(channel_id, f"flood-{n}", f"message {n}"))
    outcomes = list(answered(published).values())
    assert outcomes[:3] == ["run", "queued", "queued"]
    assert outcomes[3:] == [say("rate_limited_user", "zh-CN")] * 2
    async with sessions() as session:
        stored = (await session.exec(select(Message.content).where(Message.role == "user"))).all()
    assert sorted(stored) == ["message 0", "message 1", "message 2"], "a limited message is not stored"

    await limited_router.handle(inbound(channel_id, "flood-stop", "/stop"))
    assert len(cancelled) == 1, "a sender over the limit can still stop the answer"

    # Another sender is not limited by the first one's flood, until the channel is full.
    for n in range(3):
        await limited_router.handle(from_sender(inbound(channel_id, f"calm-{n}", "hi"), "calm-user"))
    last = list(answered(published).values())[-3:]
    assert all(outcome in ("run", "queued") for outcome in last[:2])
    assert last[2] == say("rate_limited_channel", "zh-CN")


async def test_limits_are_shared_between_replicas_and_end_with_their_window(
    redis_client: Redis, key_prefix: str
) -> None:
    limits = RateLimits(window_s=60, per_user=2, per_channel=0)
    one, two = (InboundRateLimiter(redis_client, key_prefix, limits) for _ in range(2))
    message = inbound(7, "m")
    assert await one.take(message, now=120.0) is None
    assert await two.take(message, now=121.0) is None
    assert await one.take(message, now=122.0) == Limited.USER
    assert await two.take(message, now=180.0) is None, "a new window starts afresh"


async def test_no_limits_means_no_redis_call(key_prefix: str) -> None:
    class NoRedis:
        def register_script(self, script: str) -> object:
            return None

    limiter = InboundRateLimiter(NoRedis(), key_prefix, RateLimits(per_user=0, per_channel=0))  # type: ignore[arg-type]
    assert await limiter.take(inbound(7, "m")) is None


def test_the_sentences_exist_in_both_languages() -> None:
    for key in ("rate_limited_user", "rate_limited_channel"):
        assert say(key, "zh-CN") != say(key, "en-US")
        assert "again" in say(key, "en-US")
