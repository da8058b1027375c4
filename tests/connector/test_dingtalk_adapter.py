"""DingTalkAdapter against imsim over real HTTP and websockets, and JetStream for the publish."""

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NATS

from imgate_common.bus import INBOUND_STREAM, MSG_ID_HEADER, inbound_subject, provision_streams
from imgate_common.channels import ChannelSpec
from imgate_common.messages import ChannelState, InboundMessage
from imgate_connector.health import ChannelHealth
from imgate_connector.inbound import InboundPublisher, dedup_id
from imgate_connector.platforms.dingtalk.adapter import DingTalkAdapter
from imgate_connector.settings import ConnectorSettings

Sink = Callable[[InboundMessage], Awaitable[None]]


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(10):
        while not await check():  # noqa: ASYNC110 (polls another process)
            await asyncio.sleep(0.05)


class Sim:
    """The user's side of imsim for one app."""

    def __init__(self, base: str, client: httpx.AsyncClient, app: str) -> None:
        self.base, self.client, self.app = base, client, app

    async def get(self, what: str) -> list[dict[str, Any]]:
        response = await self.client.get(f"{self.base}/sim/apps/{self.app}/{what}")
        response.raise_for_status()
        return list(response.json())

    async def post(self, what: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self.client.post(f"{self.base}/sim/apps/{self.app}/{what}", json=body)
        response.raise_for_status()
        return dict(response.json())

    async def acks_for(self, msg_id: str) -> list[int]:
        return [a["code"] for a in await self.get("acks") if a["msg_id"] == msg_id]


@pytest.fixture
async def sim(imsim: str) -> AsyncIterator[Sim]:
    app = f"app-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.post(
            f"{imsim}/sim/apps",
            json={"client_id": app, "client_secret": "s3cret", "redeliver_after": 1, "disconnect_grace": 1},
        )
        response.raise_for_status()
        yield Sim(imsim, client, app)


@pytest.fixture
async def run_adapter(
    sim: Sim,
) -> AsyncIterator[Callable[[Sink], Awaitable[tuple[DingTalkAdapter, ChannelHealth]]]]:
    adapters: list[DingTalkAdapter] = []
    http = httpx.AsyncClient(timeout=5)

    async def start(sink: Sink) -> tuple[DingTalkAdapter, ChannelHealth]:
        channel_id = 900_000 + len(adapters)
        spec = ChannelSpec(
            id=channel_id,
            name="t",
            platform="dingtalk",
            enabled=True,
            default_agent_id=None,
            session_scope="conversation",
            config={"client_id": sim.app, "client_secret": "s3cret", "openapi_endpoint": sim.base},
        )
        health = ChannelHealth(channel_id=channel_id, owner="test")
        adapter = DingTalkAdapter(spec, ConnectorSettings(reconnect_min_s=0.2), sink, health, http)
        adapters.append(adapter)
        await adapter.start()

        async def connected() -> bool:
            return health.state == ChannelState.CONNECTED

        await until(connected)
        return adapter, health

    yield start
    for adapter in adapters:
        await adapter.stop()
    await http.aclose()


async def test_frame_is_acked_only_after_the_publish_returned(sim: Sim, run_adapter: Any) -> None:
    gate = asyncio.Event()
    received: list[InboundMessage] = []

    async def slow_sink(message: InboundMessage) -> None:
        received.append(message)
        await gate.wait()

    await run_adapter(slow_sink)
    sent = await sim.post("messages", {"text": "hello"})

    async def got() -> bool:
        return bool(received)

    await until(got)
    await asyncio.sleep(0.3)
    assert await sim.acks_for(sent["msg_id"]) == [], "ACKed before the bus confirmed"
    gate.set()

    async def acked() -> bool:
        return await sim.acks_for(sent["msg_id"]) == [200]

    await until(acked)
    assert received[0].text == "hello" and received[0].message_id == sent["msg_id"]


async def test_failed_publish_is_not_acked_so_dingtalk_redelivers(sim: Sim, run_adapter: Any) -> None:
    attempts: list[str] = []

    async def flaky_sink(message: InboundMessage) -> None:
        attempts.append(message.message_id)
        if len(attempts) == 1:
            raise ConnectionError("nats unreachable")

    _, health = await run_adapter(flaky_sink)
    sent = await sim.post("messages", {"text": "keep me"})

    async def acked() -> bool:
        return await sim.acks_for(sent["msg_id"]) == [200]

    await until(acked)
    deliveries = [d for d in await sim.get("deliveries") if d["msg_id"] == sent["msg_id"]]
    assert attempts == [sent["msg_id"], sent["msg_id"]]
    assert len({d["frame_id"] for d in deliveries}) == 2, "the redelivery is a new frame"
    assert health.last_error and "nats unreachable" in health.last_error


async def test_unreadable_payload_is_acked_and_never_published(sim: Sim, run_adapter: Any) -> None:
    published: list[InboundMessage] = []

    async def sink(message: InboundMessage) -> None:
        published.append(message)

    _, health = await run_adapter(sink)
    broken = await sim.post("messages", {"raw_data": "{not json"})
    no_id = await sim.post("messages", {"raw_data": json.dumps({"msgtype": "text"})})

    async def both_acked() -> bool:
        return await sim.acks_for(broken["msg_id"]) == [200] and await sim.acks_for(no_id["msg_id"]) == [200]

    await until(both_acked)
    await asyncio.sleep(1.5)  # past redeliver_after: nothing comes back
    assert published == []
    assert len([d for d in await sim.get("deliveries") if d["msg_id"] == broken["msg_id"]]) == 1
    assert health.last_error and "malformed" in health.last_error


async def test_disconnect_opens_the_new_connection_before_the_old_one_closes(
    sim: Sim, run_adapter: Any
) -> None:
    received: list[str] = []

    async def sink(message: InboundMessage) -> None:
        received.append(message.text)

    _, health = await run_adapter(sink)
    [old] = await sim.get("connections")
    await sim.post("disconnect", {})

    old_id = old["connection_id"]

    async def handed_over() -> bool:
        connections = await sim.get("connections")
        old_now = next(c for c in connections if c["connection_id"] == old_id)
        new = [c for c in connections if c["connection_id"] != old_id]
        return bool(new) and old_now["closed_at"] is not None

    await until(handed_over)
    connections = await sim.get("connections")
    old_now = next(c for c in connections if c["connection_id"] == old_id)
    [new] = [c for c in connections if c["connection_id"] != old_id]
    assert new["opened_at"] <= old_now["closed_at"], "the new connection must open before the old one drains"
    assert health.state == ChannelState.CONNECTED
    sent = await sim.post("messages", {"text": "after handover"})

    async def acked() -> bool:
        return await sim.acks_for(sent["msg_id"]) == [200]

    await until(acked)
    assert received == ["after handover"]


async def test_publisher_sets_the_dedup_id_and_jetstream_drops_the_repeat(
    nats_client: NATS, sim: Sim, run_adapter: Any
) -> None:
    js = nats_client.jetstream()
    await provision_streams(js)
    publisher = InboundPublisher(js, timeout_s=5)
    seen: list[InboundMessage] = []

    async def sink(message: InboundMessage) -> None:
        seen.append(message)
        await publisher(message)

    await run_adapter(sink)
    sent = await sim.post("messages", {"text": "durable"})

    async def acked() -> bool:
        return await sim.acks_for(sent["msg_id"]) == [200]

    await until(acked)
    ack = await js.publish(
        inbound_subject("dingtalk", seen[0].channel_id, seen[0].target.conversation_id),
        seen[0].model_dump_json().encode(),
        headers={MSG_ID_HEADER: dedup_id(seen[0])},
    )
    assert ack.duplicate and ack.stream == INBOUND_STREAM
    stored = await js.get_last_msg(
        INBOUND_STREAM, inbound_subject("dingtalk", seen[0].channel_id, seen[0].target.conversation_id)
    )
    assert stored.headers and stored.headers[MSG_ID_HEADER] == dedup_id(seen[0])
    assert InboundMessage.model_validate_json(stored.data).message_id == sent["msg_id"]
