"""The router and its conversation's queue when a router stops at the worst moment."""

from typing import Any

import pytest
from redis.asyncio import Redis

from imgate_common.conversation_queue import ConversationQueue
from imgate_common.messages import RunQueued, RunRequest
from imgate_router.service import InboundRouter
from tests.router.conftest import Published, inbound


async def test_a_message_redelivered_after_its_run_finished_takes_no_lock(
    router: InboundRouter,
    published: Published,
    channel_id: int,
    finish: Any,
    redis_client: Redis,
    key_prefix: str,
) -> None:
    """Published, answered, and the router died before marking the message seen: the
    redelivery must neither start the run again nor hold the conversation."""
    await router.handle(inbound(channel_id, "r1", "one"))
    [run] = published.of(RunRequest)
    await finish(run)
    await redis_client.delete(router._seen_key(inbound(channel_id, "r1")))  # never marked
    await router.handle(inbound(channel_id, "r1", "one"))
    queue = ConversationQueue(redis_client, key_prefix, active_ttl_s=60)
    assert await queue.active(run.conversation_id) is None
    await router.handle(inbound(channel_id, "r2", "two"))
    runs = published.of(RunRequest)
    assert [r.text for r in runs] == ["one", "two"], "the next message starts at once"
    assert published.of(RunQueued) == []


async def test_a_message_arriving_after_the_lock_expired_starts_the_waiting_run_first(
    router: InboundRouter, published: Published, channel_id: int, redis_client: Redis, key_prefix: str
) -> None:
    await router.handle(inbound(channel_id, "e1", "one"))
    await router.handle(inbound(channel_id, "e2", "two"))
    [first] = published.of(RunRequest)
    await redis_client.delete(f"{key_prefix}:conv:{first.conversation_id}:active")  # expired
    await router.handle(inbound(channel_id, "e3", "three"))
    assert [r.text for r in published.of(RunRequest)] == ["one", "two"]
    assert [q.position for q in published.of(RunQueued)] == [1, 2]


async def test_the_chaos_hook_exits_between_the_publish_and_marking_seen(
    router: InboundRouter, published: Published, channel_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    exits: list[int] = []

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr("imgate_router.service.os._exit", fake_exit)
    monkeypatch.setattr(router._settings, "chaos_exit_every_n_runs", 1)
    await router.handle(inbound(channel_id, "x1", "/help"))  # not a run: no exit
    with pytest.raises(SystemExit):
        await router.handle(inbound(channel_id, "x2"))
    assert exits == [3] and len(published.of(RunRequest)) == 1
    assert not await router._redis.exists(router._seen_key(inbound(channel_id, "x2")))
