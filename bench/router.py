"""Router figures: messages/s routed with a warm identity cache, and the router hop's latency.

The baseline, in the same run, is the bare minimum a router must do: store the user turn and
publish the run, with no dedup, identity, conversation lookup or queue.
"""

import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import structlog
from measure import percentile
from pydantic import BaseModel
from redis.asyncio import Redis

from imgate_common.db.engine import create_engine, session_factory
from imgate_common.db.migrate import upgrade_async
from imgate_common.db.models import Agent, Channel, Conversation, Message
from imgate_common.messages import InboundMessage
from imgate_common.secrets import SecretBox
from imgate_connector.platforms.dingtalk.translate import translate
from imgate_router.service import InboundRouter
from imgate_router.settings import RouterSettings

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD: dict[str, Any] = json.loads((ROOT / "tests/fixtures/dingtalk/text_single.json").read_text())
USERS = 20


async def _noop_publish(subject: str, stream: str, model: BaseModel, msg_id: str) -> None:
    return None


async def _noop_cancel(run_id: str) -> None:
    return None


def _messages(channel_id: int, count: int) -> list[InboundMessage]:
    out = []
    for i in range(count):
        data = dict(PAYLOAD, msgId=f"bench-{uuid.uuid4().hex}", senderStaffId=f"user{i % USERS}")
        data["conversationId"] = f"cid-{i}"  # one message per conversation: no queueing in the figure
        out.append(translate(data, channel_id, None))
    return out


async def _measure(data: Path, count: int, baseline: bool) -> tuple[float, float, float]:
    url = f"sqlite+aiosqlite:///{data}/router-{uuid.uuid4().hex[:6]}.db"
    await upgrade_async(url)
    engine = create_engine(url)
    sessions = session_factory(engine)
    redis = Redis.from_url("redis://127.0.0.1:6379/0")
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    # No rate limits: 20 users sending 420 messages in seconds would mostly be refused (a
    # cheaper path), and the figure is about routing.
    settings = RouterSettings(
        redis_prefix=prefix, data_dir=data, rate_user_per_window=0, rate_channel_per_window=0
    )
    async with sessions() as session:
        agent = Agent(name="a", provider="local")
        session.add(agent)
        await session.flush()
        channel = Channel(name="bench", platform="dingtalk", default_agent_id=agent.id)
        session.add(channel)
        await session.flush()
        conversation = Conversation(id=str(uuid.uuid4()), channel_id=channel.id, scope_key="bench")
        session.add(conversation)
        await session.commit()
        channel_id, conversation_id = channel.id, conversation.id
    assert channel_id is not None
    async with httpx.AsyncClient() as http:
        router = InboundRouter(
            settings, sessions, redis, _noop_publish, _noop_cancel, http, SecretBox.from_settings(settings)
        )
        for message in _messages(channel_id, USERS):  # warm the identities
            await router.handle(message)
        latencies: list[float] = []
        batch = _messages(channel_id, count)
        start = time.perf_counter()
        for message in batch:
            t0 = time.perf_counter()
            if baseline:
                async with sessions() as session:
                    session.add(Message(conversation_id=conversation_id, role="user", content=message.text))
                    await session.commit()
                await _noop_publish("s", "S", message, message.message_id)
            else:
                await router.handle(message, redelivered=False)  # a first delivery, as most are
            latencies.append((time.perf_counter() - t0) * 1000)
        rate = count / (time.perf_counter() - start)
    keys = [k async for k in redis.scan_iter(f"{prefix}:*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()
    await engine.dispose()
    return rate, percentile(latencies, 0.5), percentile(latencies, 0.99)


def rows(quick: bool = False) -> list[tuple[str, str, str, str]]:
    import logging

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    count = 100 if quick else 400
    with tempfile.TemporaryDirectory() as tmp:
        rate, p50, p99 = asyncio.run(_measure(Path(tmp), count, baseline=False))
        b_rate, b_p50, b_p99 = asyncio.run(_measure(Path(tmp), count, baseline=True))
    return [
        (
            "router: messages/s routed (warm identity cache, SQLite)",
            f"{rate:,.0f}",
            f"{b_rate:,.0f}",
            f"{rate / b_rate:.2f}x",
        ),
        ("router: added latency p50 ms", f"{p50:.2f}", f"{b_p50:.2f}", f"{p50 / b_p50:.1f}x"),
        ("router: added latency p99 ms", f"{p99:.2f}", f"{b_p99:.2f}", f"{p99 / b_p99:.1f}x"),
    ]
