"""DingTalkAdapter against imsim over real HTTP and websockets: what is DingTalk's own beyond the
platform contract (test_contract.py): SYSTEM frames, pings, the watchdog, back-off, stopping
beside a half-dead peer, and payloads that cannot be read."""

import asyncio
import json
import time
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from imgate_common.bus import INBOUND_STREAM, MSG_ID_HEADER, inbound_subject
from imgate_common.messages import ChannelState, InboundMessage
from imgate_connector.inbound import InboundPublisher, dedup_id
from imgate_connector.lease import ChannelLease, LeaseExpired
from imgate_connector.link import backoff_delay
from tests.connector.conftest import Start
from tests.connector.sim import Sim, until


async def test_unreadable_payload_is_acked_never_published_and_answered(sim: Sim, run_adapter: Start) -> None:
    published: list[InboundMessage] = []

    async def sink(message: InboundMessage) -> None:
        published.append(message)

    _, health = await run_adapter(sink)
    broken = await sim.send(raw_data="{not json")
    no_id = await sim.send(raw_data=json.dumps({"msgtype": "text", "senderStaffId": "pat"}))

    async def both_acked() -> bool:
        return await sim.acks_for(broken["msg_id"]) == [200] and await sim.acks_for(no_id["msg_id"]) == [200]

    await until(both_acked)

    async def told() -> bool:
        conversations = await sim.get("conversations")
        return any(c["items"] for c in conversations if "pat" in json.dumps(c))

    await until(told)  # the sender of the payload without msgId heard that it could not be read
    await asyncio.sleep(1.5)  # past redeliver_after: nothing comes back
    assert published == []
    assert len([d for d in await sim.get("deliveries") if d["msg_id"] == broken["msg_id"]]) == 1
    assert health.messages_malformed == 2
    assert health.last_error and "malformed" in health.last_error


class RecordingSocket:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, text: str) -> None:
        self.sent.append(json.loads(text))


async def test_frames_we_did_not_subscribe_to_are_acked_not_redelivered(sim: Sim, run_adapter: Start) -> None:
    adapter, _ = await run_adapter(wait=False)
    ws = RecordingSocket()
    event = {"type": "EVENT", "headers": {"messageId": "e1", "topic": "chat_update"}, "data": "{}"}
    other = {"type": "CALLBACK", "headers": {"messageId": "c1", "topic": "/v1.0/card/callback"}, "data": "{}"}
    for frame in (event, other):
        await adapter._on_frame(ws, json.dumps(frame), asyncio.Event())  # type: ignore[arg-type]
    assert [(a["headers"]["messageId"], a["code"]) for a in ws.sent] == [("e1", 200), ("c1", 200)]


async def test_disconnect_opens_the_new_connection_before_the_old_one_closes(
    sim: Sim, run_adapter: Start
) -> None:
    received: list[str] = []

    async def sink(message: InboundMessage) -> None:
        received.append(message.text)

    _, health = await run_adapter(sink)
    [old] = await sim.get("connections")
    await sim.post("disconnect")
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
    sent = await sim.send("after handover")

    async def acked() -> bool:
        return await sim.acks_for(sent["msg_id"]) == [200]

    await until(acked)
    assert received == ["after handover"]


async def test_pings_are_answered_with_their_opaque(sim: Sim, run_adapter: Start) -> None:
    await sim.patch({"ping_interval": 0.3})
    await run_adapter()

    async def echoed() -> bool:
        return int((await sim.counters())["pings"]["echoed"]) >= 2

    await until(echoed)
    pings = await sim.get("pings")
    assert all(p["echoed"] for p in pings if p["acked"])


async def test_a_half_dead_socket_is_replaced_within_the_configured_time(
    sim: Sim, run_adapter: Start
) -> None:
    _, health = await run_adapter(ping_interval_s=0.5, stale_after_s=2.0)
    [old] = await sim.open_connections()
    await sim.post("connections/half-dead", {"connection_id": old["connection_id"]})
    started = time.monotonic()

    async def replaced() -> bool:
        return any(c["connection_id"] != old["connection_id"] for c in await sim.open_connections())

    took = await until(replaced, within=10)
    # stale_after (2 s) + one watchdog tick (0.25 s) + back-off (≤ 0.2 s) + the reconnect itself
    assert took < 3.5, f"replaced after {took:.1f} s"
    assert time.monotonic() - started < 3.5
    assert health.state == ChannelState.CONNECTED
    assert health.last_error and "half-dead" in health.last_error
    sent = await sim.send("still there?")

    async def acked() -> bool:
        return 200 in await sim.acks_for(sent["msg_id"])

    await until(acked)


async def test_failed_opens_back_off_and_show_in_status(sim: Sim, run_adapter: Start) -> None:
    await sim.faults(open_failure="server_error", open_failure_count=3)
    adapter, health = await run_adapter(wait=False, reconnect_min_s=0.1, reconnect_max_s=1.0)

    async def failed_once() -> bool:
        return health.last_error is not None

    await until(failed_once)
    assert health.state == ChannelState.DISCONNECTED
    assert "503" in (health.last_error or "")
    assert await adapter.wait_connected(10)
    assert (await sim.counters())["connections"]["opens_refused"] == {"server_error": 3}
    assert health.reconnects == 3


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap() -> None:
    for failures, ceiling in [(1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (20, 60)]:
        delays = [backoff_delay(failures, 1, 60) for _ in range(200)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling
        assert max(delays) - min(delays) > ceiling / 10, "jittered"


async def test_stop_takes_under_a_second_even_with_a_half_dead_peer(sim: Sim, run_adapter: Start) -> None:
    adapter, health = await run_adapter()
    await sim.post("connections/half-dead")
    started = time.monotonic()
    await adapter.stop()
    assert time.monotonic() - started < 1.0
    assert health.state == ChannelState.DISCONNECTED


async def test_wrong_credentials_show_in_status(sim: Sim, run_adapter: Start) -> None:
    await sim.faults(open_failure="bad_credentials")
    _, health = await run_adapter(wait=False)

    async def failed() -> bool:
        return health.last_error is not None

    await until(failed)
    assert "401" in (health.last_error or "") and health.state == ChannelState.DISCONNECTED


async def test_publisher_sets_the_dedup_id_and_jetstream_drops_the_repeat(
    bus: tuple[NATS, JetStreamContext], sim: Sim, run_adapter: Start
) -> None:
    _, js = bus
    publisher = InboundPublisher(js, timeout_s=5)
    seen: list[InboundMessage] = []

    async def sink(message: InboundMessage) -> None:
        seen.append(message)
        await publisher(message)

    await run_adapter(sink)
    sent = await sim.send("durable")

    async def acked() -> bool:
        return await sim.acks_for(sent["msg_id"]) == [200]

    await until(acked)
    subject = inbound_subject("dingtalk", seen[0].channel_id, seen[0].target.conversation_id)
    ack = await js.publish(
        subject,
        seen[0].model_dump_json().encode(),
        headers={MSG_ID_HEADER: dedup_id(seen[0])},
    )
    assert ack.duplicate and ack.stream == INBOUND_STREAM
    stored = await js.get_last_msg(INBOUND_STREAM, subject)
    assert stored.headers and stored.headers[MSG_ID_HEADER] == dedup_id(seen[0])
    assert InboundMessage.model_validate_json(stored.data).message_id == sent["msg_id"]


async def test_no_ack_no_card_and_no_platform_call_once_the_lease_is_no_longer_ours(
    sim: Sim, run_adapter: Start, redis_client: Redis, key_prefix: str
) -> None:
    stored: list[InboundMessage] = []

    async def sink(message: InboundMessage) -> bool:
        stored.append(message)
        return False

    adapter, _ = await run_adapter(sink)
    lease = ChannelLease(redis_client, key_prefix, "me", ttl_s=5)
    assert await lease.acquire(adapter.spec.id) is not None
    adapter.fence = adapter.surface.fence = lease.fenced(adapter.spec.id)
    opened: list[InboundMessage] = []
    adapter.on_accepted = opened.append
    first = await sim.send("while the channel is ours")

    async def acked() -> bool:
        return await sim.acks_for(first["msg_id"]) == [200]

    await until(acked)
    lease.forget(adapter.spec.id)  # its local deadline passed: another replica may hold it soon
    labels = {"platform": "dingtalk", "type": "text", "result": "lease_expired"}
    before = REGISTRY.get_sample_value("imgate_inbound_messages_total", labels) or 0.0
    second = await sim.send("after it moved on")

    async def withheld() -> bool:
        return (REGISTRY.get_sample_value("imgate_inbound_messages_total", labels) or 0.0) > before

    await until(withheld)
    assert [m.message_id for m in stored] == [first["msg_id"], second["msg_id"]], "stored: it is safe"
    assert await sim.acks_for(second["msg_id"]) == [], "the platform redelivers it to the new owner"
    assert [m.message_id for m in opened] == [first["msg_id"]], "no card for it here"
    calls = (await sim.counters())["api_calls"]
    with pytest.raises(LeaseExpired):
        await adapter.surface.send_text(opened[0].target, "too late")
    with pytest.raises(LeaseExpired):
        await adapter.surface.close_card("some-card", "too late", failed=False)
    assert (await sim.counters())["api_calls"] == calls, "nothing reached the platform"
