"""Feishu's long connection and reply surface against imsim's Feishu module: what is Feishu's
own (chunks, pings, the connection limit, the token on media, CardKit streaming)."""

import json
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from imgate_common.messages import Attachment, ChannelState, InboundMessage, MessageKind
from imgate_connector.platforms.feishu.adapter import FeishuAdapter
from tests.connector.conftest import adapters_of
from tests.connector.platforms.feishu.conftest import FeishuSim, StartFeishu
from tests.connector.sim import until


def collector() -> tuple[list[InboundMessage], Any]:
    got: list[InboundMessage] = []

    async def sink(message: InboundMessage) -> None:
        got.append(message)

    return got, sink


async def acked(feishu: FeishuSim, message_id: str) -> list[int]:
    return [a["code"] for a in (await feishu.event(message_id))["acks"]]


async def test_an_event_split_into_chunks_is_joined_and_acked_once(
    feishu: FeishuSim, run_feishu: StartFeishu
) -> None:
    await feishu.patch({"chunk_size": 64})
    got, sink = collector()
    await run_feishu(sink)
    text = "a long question " * 40
    sent = await feishu.send(text, sender_id="pat")
    event = await feishu.event(sent["message_id"])
    assert event["deliveries"][0]["frames"] > 5, "the simulator split it"

    async def done() -> bool:
        return await acked(feishu, sent["message_id"]) == [200]

    await until(done)
    [message] = got
    assert message.text == text.strip() and message.message_id == sent["message_id"]


async def test_pings_go_out_at_the_interval_the_endpoint_and_pongs_name(
    feishu: FeishuSim, run_feishu: StartFeishu
) -> None:
    await feishu.patch({"ping_interval": 5})
    adapter, _ = await run_feishu()
    assert adapter.ping_interval_s == 5
    await feishu.patch({"ping_interval": 6})  # the next pong says so

    async def pinged() -> bool:
        return sum(c["pings"] for c in await feishu.open_connections()) >= 1 and adapter.ping_interval_s == 6

    await until(pinged, within=15)


async def test_too_many_connections_shows_in_status(feishu: FeishuSim, run_feishu: StartFeishu) -> None:
    await feishu.patch({"max_connections": 1})
    await run_feishu()
    _, refused = await run_feishu(wait=False)

    async def said() -> bool:
        return "too many connections" in (refused.last_error or "")

    await until(said)
    assert refused.state != ChannelState.CONNECTED
    assert len(await feishu.open_connections()) == 1


async def test_a_group_mention_of_the_bot_is_taken_out(feishu: FeishuSim, run_feishu: StartFeishu) -> None:
    got, sink = collector()
    await run_feishu(sink)
    await feishu.send("what is new?", sender_id="pat", group="team")
    await until(lambda: _nonempty(got))
    [message] = got
    assert message.mentions_bot and message.text == "what is new?"
    assert message.target.conversation_type == "group"


async def test_the_bots_open_id_is_learned_so_a_later_mention_of_it_is_the_bots(
    feishu: FeishuSim, run_feishu: StartFeishu
) -> None:
    app = (await feishu.client.get(f"{feishu.base}/sim/feishu/apps/{feishu.app}")).json()
    got, sink = collector()
    adapter, _ = await run_feishu(sink)
    assert adapter.bot_open_id == app["bot_open_id"]
    alice = {"open_id": "ou_alice", "union_id": "on_alice", "user_id": "alice01"}
    pat = {"open_id": "ou_pat", "union_id": "on_pat", "user_id": "pat"}
    mentions = [
        {"key": "@_user_1", "id": alice, "name": "Alice", "tenant_key": app["tenant_key"]},
        {"key": "@_user_2", "id": {"open_id": app["bot_open_id"]}, "name": app["name"]},
    ]
    message = {
        "message_id": "om_alice_first",
        "chat_id": "oc_team",
        "chat_type": "group",
        "message_type": "text",
        "content": json.dumps({"text": "@_user_1 @_user_2 can you check?"}),
        "mentions": mentions,
    }
    raw_event = {
        "schema": "2.0",
        "header": {"event_id": "ev_alice_first", "event_type": "im.message.receive_v1"},
        "event": {"sender": {"sender_id": pat, "sender_type": "user"}, "message": message},
    }
    await feishu.post("messages", {"raw_event": raw_event})
    await until(lambda: _nonempty(got))
    [received] = got
    assert received.mentions_bot and received.text == "@Alice can you check?"
    assert [m.id for m in received.mentions] == ["ou_alice"]


async def _nonempty(items: list[Any]) -> bool:
    return bool(items)


async def test_media_download_with_the_apps_token(feishu: FeishuSim, run_feishu: StartFeishu) -> None:
    got, sink = collector()
    adapter, _ = await run_feishu(sink)
    await feishu.send(message_type="image", sender_id="pat", text=None)
    await until(lambda: _nonempty(got))
    [message] = got
    [picture] = message.attachments
    source = await adapter._media_url(message, picture)
    async with httpx.AsyncClient() as http:
        response = await http.get(source.url, headers=source.headers)
    assert response.status_code == 200 and response.content
    unauthorized = await adapter._media_url(message, Attachment(kind=MessageKind.IMAGE, download_code="nope"))
    async with httpx.AsyncClient() as http:
        assert (await http.get(unauthorized.url)).status_code != 200


async def test_a_card_streams_with_a_growing_sequence_and_ends_out_of_streaming_mode(
    feishu: FeishuSim, run_feishu: StartFeishu
) -> None:
    got, sink = collector()
    adapter, _ = await run_feishu(sink)
    await feishu.send("hi", sender_id="pat")
    await until(lambda: _nonempty(got))
    surface = adapter.surface
    await surface.open_card("run-s", got[0].target)
    assert await surface.update_card("run-s", "Hello")
    assert await surface.update_card("run-s", "Hello, wor")
    await surface.close_card("run-s", "Hello, world.", failed=False)
    entity, _ = await surface.records.get("run-s")
    card = await feishu.get(f"cards/{entity}")
    assert (card["content"], card["state"], card["streaming_mode"]) == ("Hello, world.", "done", False)
    assert card["summary"] == "Hello, world."
    streamed = [u for u in card["updates"] if u["op"] == "content"]
    assert [u["extends"] for u in streamed] == [False, True], "the second update types on"
    sequences = [u["sequence"] for u in card["updates"] if u["sequence"] is not None]
    assert sequences == sorted(set(sequences))
    [answer] = (await feishu.event(got[0].message_id))["answers"]
    assert answer["kind"] == "card" and answer["reply_to"] == got[0].message_id


async def test_a_plain_reply_in_a_group_mentions_the_sender(
    feishu: FeishuSim, run_feishu: StartFeishu
) -> None:
    got, sink = collector()
    adapter, _ = await run_feishu(sink)
    await feishu.send("hi", sender_id="pat", group="team")
    await until(lambda: _nonempty(got))
    await adapter.surface.send_text(got[0].target, "**answer**", markdown=True)
    [answer] = (await feishu.event(got[0].message_id))["answers"]
    assert answer["kind"] == "markdown" and "answer" in answer["text"]
    sent = [m for m in await feishu.get("bot-messages") if m.get("reply_to") == got[0].message_id]
    assert got[0].target.sender_id in json.dumps(sent)


async def test_wrong_credentials_show_in_status(
    feishu: FeishuSim, redis_client: Redis, key_prefix: str
) -> None:
    config = {"app_id": feishu.app, "app_secret": "wrong", "domain": feishu.base}
    async with adapters_of(FeishuAdapter, config, redis_client, key_prefix, first_id=920_000) as start:
        _, health = await start(wait=False)

        async def said() -> bool:
            return "invalid" in (health.last_error or "")

        await until(said)
        assert health.state != ChannelState.CONNECTED
        assert await feishu.open_connections() == []


@pytest.mark.parametrize(
    ("message_type", "kind", "attachments"),
    [
        ("post", MessageKind.RICH_TEXT, 0),
        ("image", MessageKind.IMAGE, 1),
        ("file", MessageKind.FILE, 1),
        ("audio", MessageKind.AUDIO, 0),
        ("media", MessageKind.VIDEO, 0),
        ("sticker", MessageKind.UNSUPPORTED, 0),
    ],
)
async def test_every_message_type_the_simulator_sends_is_read(
    feishu: FeishuSim, run_feishu: StartFeishu, message_type: str, kind: MessageKind, attachments: int
) -> None:
    got, sink = collector()
    await run_feishu(sink)
    sent = await feishu.send(message_type=message_type, text="see this", sender_id="pat")
    await until(lambda: _nonempty(got))
    [message] = got
    assert (message.kind, len(message.attachments)) == (kind, attachments)

    async def done() -> bool:
        return await acked(feishu, sent["message_id"]) == [200]

    await until(done)
