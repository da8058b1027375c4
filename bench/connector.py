"""Connector figures, for the connector alone with an instant model.

The connector runs as its own process against imsim (DingTalk), a private nats-server and Redis;
an instant model in this process answers every stored message at once through the reply-event
contract (started, deltas, completed), so every millisecond measured is the connector's and the
bus's. Figures:

- first visible token, p50 / p99: the user sends → the card shows the first text. Baseline: the
  user sends → the first token is on the bus (the floor the connector cannot beat).
- card API calls per reply, for a 120-token answer streamed at 100 tokens/s. Baseline: updating
  the card on every chunk the model emits.
- memory (RSS) of the connector with 100 channels connected, idle and after the traffic.
  Baseline: the goal, 200 MB.
- inbound translations/s: DingTalk payload → validated InboundMessage → JSON for the bus, against
  the dingtalk-stream SDK's own ChatbotMessage parsing plus json.dumps.

    python bench/connector.py            # every figure
    python bench/connector.py --quick    # 20 answers instead of 60
    python bench/connector.py --memory   # only the RSS with 100 channels connected and idle
"""

import asyncio
import contextlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import nats
import structlog
from cryptography.fernet import Fernet
from dingtalk_stream.chatbot import ChatbotMessage
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from redis.asyncio import Redis

from imgate_common.bus import (
    INBOUND_ALL,
    INBOUND_STREAM,
    MSG_ID_HEADER,
    REPLIES_STREAM,
    provision_streams,
    reply_subject,
)
from imgate_common.db.engine import create_engine, session_factory
from imgate_common.db.migrate import upgrade_async
from imgate_common.db.models import Channel
from imgate_common.messages import (
    InboundMessage,
    ReplyEventBase,
    RunCompleted,
    RunDelta,
    RunStarted,
    run_id_for,
)
from imgate_common.secrets import SecretBox
from imgate_connector.platforms.dingtalk.translate import translate

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from measure import percentile, rss_mb  # noqa: E402
from report import Row, rows_table  # noqa: E402

from tools.devstack import LocalStack, free_port, shared_bytecode_cache  # noqa: E402

PAYLOAD = json.loads((ROOT / "tests/fixtures/dingtalk/text_group_at.json").read_text())
CHANNELS = 100
MEMORY_GOAL_MB = 200
TOKENS, TOKENS_PER_S = 120, 100.0
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


class InstantModel:
    """Answers every inbound message of the bench: `tokens` chunks, `1/rate` s apart."""

    def __init__(self, js: JetStreamContext, tokens: int, rate: float) -> None:
        self._js = js
        self._tokens, self._rate = tokens, rate
        self.first_token_at: dict[str, float] = {}  # msg id → wall-clock ms the first delta was stored
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None

    async def start(self) -> None:
        sub = await self._js.pull_subscribe(
            INBOUND_ALL,
            durable=f"bench-model-{uuid.uuid4().hex[:6]}",
            stream=INBOUND_STREAM,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW),
        )
        self._loop = asyncio.create_task(self._consume(sub))

    async def stop(self) -> None:
        tasks = [t for t in (self._loop, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _consume(self, sub: Any) -> None:
        while True:
            try:
                [msg] = await sub.fetch(1, timeout=1)
            except TimeoutError:
                continue
            await msg.ack()
            task = asyncio.create_task(self._answer(InboundMessage.model_validate_json(msg.data)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _emit(self, event: ReplyEventBase, kind: str) -> None:
        await self._js.publish(
            reply_subject(event.channel_id, event.run_id),
            event.model_dump_json().encode(),
            stream=REPLIES_STREAM,
            headers={MSG_ID_HEADER: f"{event.run_id}:{event.attempt}:{kind}:{event.seq}"},
        )

    async def _answer(self, message: InboundMessage) -> None:
        common: dict[str, Any] = {
            "run_id": run_id_for(message.platform, message.channel_id, message.message_id),
            "channel_id": message.channel_id,
            "target": message.target,
        }
        await self._emit(RunStarted(**common, seq=1), "started")
        text = ""
        for i in range(self._tokens):
            text += f"tok{i} "
            await self._emit(RunDelta(**common, seq=i + 2, text=f"tok{i} ", length=len(text)), "delta")
            if i == 0:
                self.first_token_at[message.message_id] = time.time() * 1000
            await asyncio.sleep(1 / self._rate)
        await self._emit(RunCompleted(**common, seq=self._tokens + 2, text=text), "completed")


async def _wait(check: Callable[[], Any], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {within:.0f} s")
        await asyncio.sleep(0.2)


async def _live(data: Path, quick: bool, memory_only: bool = False) -> list[Row]:
    # Compiled once, as in an installed product (and as the fleet of bench/e2e.py runs).
    stack = LocalStack(data, log_dir=data / "logs", quiet=True, bytecode_cache=shared_bytecode_cache())
    prefix = f"bench-connector-{uuid.uuid4().hex[:6]}"
    redis = Redis.from_url(REDIS_URL)
    http = httpx.AsyncClient(timeout=10)
    model: InstantModel | None = None
    nc = None
    try:
        imsim = stack.start_imsim(free_port(), [])
        nats_url = stack.start_nats(f"nats://127.0.0.1:{free_port()}")
        database_url = f"sqlite+aiosqlite:///{data}/bench.db"
        await upgrade_async(database_url)
        key = Fernet.generate_key().decode()
        box = SecretBox([key])
        apps = [f"bench-{uuid.uuid4().hex[:8]}" for _ in range(CHANNELS)]
        engine = create_engine(database_url)
        async with session_factory(engine)() as session:
            for i, app in enumerate(apps, start=1):
                response = await http.post(
                    f"{imsim}/sim/apps", json={"client_id": app, "client_secret": "s", "ping_interval": 30}
                )
                response.raise_for_status()
                session.add(
                    Channel(
                        id=i,
                        name=f"bench-{i}",
                        platform="dingtalk",
                        config={"client_id": app},
                        secrets_enc=box.encrypt_json({"client_secret": "s"}),
                    )
                )
            await session.commit()
        await engine.dispose()

        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        env = {
            "NATS_URL": nats_url,
            "REDIS_URL": REDIS_URL,
            "DATABASE_URL": database_url,
            "IMGATE_REDIS_PREFIX": prefix,
            "IMGATE_SECRET_KEYS": key,
            "IMGATE_LOG_LEVEL": "WARNING",
            "DINGTALK_OPENAPI_ENDPOINT": imsim,
            "CONNECTOR_RECONCILE_INTERVAL_S": "2",
        }
        started = time.monotonic()
        process = stack.spawn("connector", [sys.executable, "-m", "imgate_connector"], env)

        async def all_connected() -> bool:
            listed = (await http.get(f"{imsim}/sim/apps")).json()
            return sum(1 for a in listed if a["client_id"] in apps and a["connections"] == 1) == CHANNELS

        await _wait(all_connected, 60, f"{CHANNELS} channels connected")
        connect_s = time.monotonic() - started
        await asyncio.sleep(3)  # settled: leases, status, reply consumers
        idle_mb = rss_mb([process.popen.pid])
        if memory_only:
            return [_memory_row(" connected, idle", idle_mb)]

        await provision_streams(js)
        model = InstantModel(js, TOKENS, TOKENS_PER_S)
        await model.start()
        count = 20 if quick else 60
        sent: list[tuple[str, str]] = []  # (app, msg id)
        for i in range(count):
            app = apps[i % CHANNELS]
            response = await http.post(
                f"{imsim}/sim/apps/{app}/messages", json={"text": f"question {i}", "sender_staff_id": f"u{i}"}
            )
            sent.append((app, str(response.json()["msg_id"])))
            await asyncio.sleep(0.1)

        views: dict[str, dict[str, Any]] = {}

        async def all_final() -> bool:
            for app, msg_id in sent:
                if msg_id in views:
                    continue
                view = (await http.get(f"{imsim}/sim/apps/{app}/messages/{quote(msg_id, safe='')}")).json()
                answers = view["answers"]
                if answers and answers[0]["kind"] == "card" and answers[0]["finalized"]:
                    views[msg_id] = view
            return len(views) == len(sent)

        await _wait(all_final, 120, "every answer finalized")
        busy_mb = rss_mb([process.popen.pid])

        visible, floor = [], []
        for _, msg_id in sent:
            view = views[msg_id]
            card = view["answers"][0]
            # The first text goes either by streaming or with the switch to "inputing" (flowStatus 2).
            first = next(
                u["at"]
                for u in card["updates"]
                if u["len"] > 0 and (u["op"] == "full" or (u["op"] == "update" and u["flow_status"] == "2"))
            )
            visible.append(first - view["created_at"])
            floor.append(model.first_token_at[msg_id] - view["created_at"])
        card_calls = 0
        for app in {a for a, _ in sent}:
            counters = (await http.get(f"{imsim}/sim/apps/{app}/counters")).json()
            routes = counters["api_calls"]["by_route"]
            card_calls += sum(n for route, n in routes.items() if "/v1.0/card/" in route)
        per_reply = card_calls / len(sent)
        naive = 1 + 1 + TOKENS + 2  # create, inputing, an update per chunk, two final calls
    finally:
        if model is not None:
            await model.stop()
        if nc is not None:
            await nc.close()
        stack.stop()
        await http.aclose()
        keys = [k async for k in redis.scan_iter(f"{prefix}:*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
    return [
        (
            "connector: first visible token p50 ms (baseline: token on the bus)",
            f"{statistics.median(visible):.0f}",
            f"{statistics.median(floor):.0f}",
            f"+{statistics.median(visible) - statistics.median(floor):.0f} ms",
        ),
        (
            "connector: first visible token p99 ms (baseline: token on the bus)",
            f"{percentile(visible, 0.99):.0f}",
            f"{percentile(floor, 0.99):.0f}",
            f"+{percentile(visible, 0.99) - percentile(floor, 0.99):.0f} ms",
        ),
        (
            f"connector: card API calls per {TOKENS}-token reply (baseline: per chunk)",
            f"{per_reply:.1f}",
            str(naive),
            f"{naive / per_reply:.1f}x fewer",
        ),
        _memory_row(" connected, idle", idle_mb),
        _memory_row(f", after {len(sent)} answers", busy_mb),
        (f"connector: seconds to connect {CHANNELS} channels", f"{connect_s:.1f}", "-", "-"),
    ]


def _memory_row(when: str, mb: float) -> Row:
    return (
        f"connector: RSS MB, {CHANNELS} channels{when} (baseline: goal)",
        f"{mb:.0f}",
        str(MEMORY_GOAL_MB),
        "ok" if mb <= MEMORY_GOAL_MB else "OVER",
    )


def _per_second(fn: Callable[[], None], seconds: float = 1.0) -> float:
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(200):
            fn()
        count += 200
    return count / (time.perf_counter() - start)


def _ours_translate() -> None:
    translate(PAYLOAD, 1, None).model_dump_json()


def _baseline_translate() -> None:
    msg = ChatbotMessage.from_dict(PAYLOAD)
    json.dumps(msg.to_dict())


def rows(quick: bool = False, memory_only: bool = False) -> list[Row]:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if memory_only:
        with tempfile.TemporaryDirectory() as tmp:
            return asyncio.run(_live(Path(tmp), quick, memory_only=True))
    ours, base = _per_second(_ours_translate), _per_second(_baseline_translate)
    out: list[Row] = [
        ("inbound translations/s (higher is better)", f"{ours:,.0f}", f"{base:,.0f}", f"{ours / base:.2f}x")
    ]
    with tempfile.TemporaryDirectory() as tmp:
        out += asyncio.run(_live(Path(tmp), quick))
    return out


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        print(rows_table(rows(quick="--quick" in sys.argv, memory_only="--memory" in sys.argv)))
