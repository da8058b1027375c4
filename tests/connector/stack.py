"""A connector with everything around it for the acceptance tests: channels in a real database,
imsim as DingTalk, a private nats-server, Redis, and an instant agent in place of the router and
the runner (it answers every stored message at once, speaking the reply-event contract)."""

import asyncio
import contextlib
import os
import random
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.bus import INBOUND_ALL, INBOUND_STREAM, MSG_ID_HEADER, REPLIES_STREAM, reply_subject
from imgate_common.db.models import Channel
from imgate_common.messages import (
    InboundMessage,
    MessageKind,
    Notice,
    ReplyEventBase,
    RunCompleted,
    RunDelta,
    RunStarted,
    run_id_for,
)
from imgate_common.secrets import SecretBox
from imgate_connector.main import serve
from imgate_connector.settings import ConnectorSettings
from tools.devstack import LocalStack

log = structlog.get_logger()

REDIS_URL = "redis://127.0.0.1:6379/0"


def echo(text: str) -> str:
    return f"Echo: {text}"


@dataclass
class InstantAgent:
    """Router and runner in one: every inbound message of `channels` gets its answer streamed
    back at once, in `chunks` deltas `delay_s` apart. It keeps no state of its own, so what it
    answers twice the connector and JetStream let through twice."""

    js: JetStreamContext
    channels: set[int]
    answer: Callable[[str], str] = echo
    chunks: int = 4
    delay_s: float = 0.01
    first_delay_s: float = 0.0
    gate: asyncio.Event | None = None  # while set up and not set, answers wait
    received: list[str] = field(default_factory=list)  # message ids, in the order they came
    _task: asyncio.Task[None] | None = None
    _sub: Any = None
    _runs: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        sub = await self.js.pull_subscribe(
            INBOUND_ALL,
            durable=f"instant-agent-{uuid.uuid4().hex[:8]}",
            stream=INBOUND_STREAM,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.NEW, ack_policy=AckPolicy.EXPLICIT, ack_wait=30
            ),
        )
        self._sub = sub
        self._task = asyncio.create_task(self._consume(sub))

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._runs) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _consume(self, sub: Any) -> None:
        while True:
            try:
                msgs = await sub.fetch(1, timeout=1)
            except TimeoutError:
                continue
            except Exception:  # the bus is away (a test stopped it): try again
                await asyncio.sleep(0.2)
                continue
            for msg in msgs:
                message = InboundMessage.model_validate_json(msg.data)
                if message.channel_id in self.channels:
                    self.received.append(message.message_id)
                    task = asyncio.create_task(self._answer(message))
                    self._runs.add(task)
                    task.add_done_callback(self._runs.discard)
                with contextlib.suppress(Exception):
                    await msg.ack()

    async def _publish(self, event: ReplyEventBase) -> None:
        msg_id = f"{event.run_id}:{event.attempt}:{getattr(event, 'kind', '')}:{event.seq}"
        for _ in range(100):  # the bus may be down for a while
            try:
                await self.js.publish(
                    reply_subject(event.channel_id, event.run_id),
                    event.model_dump_json().encode(),
                    stream=REPLIES_STREAM,
                    headers={MSG_ID_HEADER: msg_id},
                    timeout=2,
                )
                return
            except Exception:
                await asyncio.sleep(0.2)

    async def _answer(self, message: InboundMessage) -> None:
        run_id = run_id_for(message.platform, message.channel_id, message.message_id)
        common: dict[str, Any] = {
            "run_id": run_id,
            "channel_id": message.channel_id,
            "target": message.target,
        }
        text = message.text
        if message.kind in (MessageKind.UNSUPPORTED, MessageKind.VIDEO) or not text:
            await self._publish(Notice(**common, text="Sorry, I can't handle this kind of message yet."))
            return
        if text.startswith("/"):
            await self._publish(Notice(**common, text="OK."))
            return
        answer = self.answer(text)
        if self.gate is not None:
            await self.gate.wait()
        await self._publish(RunStarted(**common, seq=1))
        await asyncio.sleep(self.first_delay_s)
        size = max(1, -(-len(answer) // self.chunks))
        pieces = [answer[i : i + size] for i in range(0, len(answer), size)]
        sent = ""
        for seq, piece in enumerate(pieces, start=2):
            sent += piece
            await self._publish(RunDelta(**common, seq=seq, text=piece, length=len(sent)))
            await asyncio.sleep(self.delay_s)
        await self._publish(RunCompleted(**common, seq=len(pieces) + 2, text=answer))


def new_channel_ids(count: int) -> list[int]:
    """Ids no other test uses, so consumers on the shared nats-server never mix tests."""
    base = random.randrange(10_000, 2_000_000_000 // 1000) * 1000
    return [base + i for i in range(count)]


async def add_channel(
    sessions: async_sessionmaker[AsyncSession],
    box: SecretBox,
    channel_id: int,
    client_id: str,
    secret: str,
    *,
    enabled: bool = True,
    card_qps: int | None = None,
    endpoint: str | None = None,
) -> None:
    config: dict[str, Any] = {"client_id": client_id}
    if endpoint:
        config["openapi_endpoint"] = endpoint
    row = Channel(
        id=channel_id,
        name=f"ch-{channel_id}",
        platform="dingtalk",
        config=config,
        secrets_enc=box.encrypt_json({"client_secret": secret}),
        enabled=enabled,
    )
    if card_qps is not None and hasattr(row, "card_qps"):
        row.card_qps = card_qps
    async with sessions() as session:
        session.add(row)
        await session.commit()


async def set_enabled(sessions: async_sessionmaker[AsyncSession], channel_id: int, enabled: bool) -> None:
    async with sessions() as session:
        row = await session.get(Channel, channel_id)
        assert row is not None
        row.enabled = enabled
        session.add(row)
        await session.commit()


def fast_settings(**overrides: Any) -> dict[str, Any]:
    """Connector knobs for tests: quick to notice, quick to move."""
    return {
        "reconcile_interval_s": 1.0,
        "lease_ttl_s": 3.0,
        "lease_interval_s": 0.5,
        "takeover_grace_s": 1.0,
        "status_interval_s": 0.5,
        "rebalance_interval_s": 2.0,
        "reconnect_min_s": 0.2,
        "reconnect_max_s": 2.0,
        "card_update_interval_s": 0.1,
        "reply_ack_wait_s": 5.0,
        "publish_timeout_s": 2.0,
        **overrides,
    }


@contextlib.asynccontextmanager
async def connector(
    *,
    nats_url: str,
    database_url: str,
    prefix: str,
    secret_keys: str,
    imsim: str | None = None,
    **overrides: Any,
) -> AsyncIterator[ConnectorSettings]:
    """One connector replica in this process, served until the block ends (then SIGTERM-like).
    `imsim` becomes DingTalk's OpenAPI for channels without an `openapi_endpoint` of their own,
    through the environment as in production, and stays so for the test process: a replica
    still running when another stops must not lose it (the tests share one imsim)."""
    if imsim is not None:
        os.environ["DINGTALK_OPENAPI_ENDPOINT"] = imsim
    settings = ConnectorSettings(
        nats_url=nats_url,
        redis_url=REDIS_URL,
        database_url=database_url,
        redis_prefix=prefix,
        secret_keys=secret_keys,
        instance_id=f"in-process-{uuid.uuid4().hex[:6]}",
        **fast_settings(**overrides),
    )
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(settings, stop, ready))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait([task, waiter], timeout=20, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        task.result()  # it failed to start: say why
    try:
        yield settings
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


def process_env(
    *, nats_url: str, database_url: str, prefix: str, secret_keys: str, imsim: str, **overrides: Any
) -> dict[str, str]:
    """The environment of a connector started as its own process."""
    env = {
        "NATS_URL": nats_url,
        "REDIS_URL": REDIS_URL,
        "DATABASE_URL": database_url,
        "IMGATE_REDIS_PREFIX": prefix,
        "IMGATE_SECRET_KEYS": secret_keys,
        "DINGTALK_OPENAPI_ENDPOINT": imsim,
        "IMGATE_LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    }
    for key, value in fast_settings(**overrides).items():
        env[f"CONNECTOR_{key.upper()}"] = str(value)
    return env


def start_connector_process(stack: LocalStack, name: str, env: dict[str, str]) -> Any:
    """`python -m imgate_connector` under `name`, with its own instance id."""
    return stack.spawn(name, [sys.executable, "-m", "imgate_connector"], {**env, "IMGATE_INSTANCE_ID": name})
