"""The Stream gateway: tickets, pushed CALLBACK frames, ACKs, redelivery, queueing, pings,
disconnects."""

import asyncio
import json
import time

import pytest
from imsim_testkit import (
    BOT_TOPIC,
    StreamPeer,
    open_connection,
    send_user_message,
    sim_json,
    wait_for,
    ws_url,
)
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

pytestmark = pytest.mark.timeout(60)


async def test_open_connection_checks_credentials(sim, make_app, imsim_url):
    app = await make_app()
    wrong = await sim.post(
        "/v1.0/gateway/connections/open",
        json={"clientId": app["client_id"], "clientSecret": "nope", "subscriptions": []},
    )
    unknown = await sim.post(
        "/v1.0/gateway/connections/open",
        json={"clientId": "no-such-app", "clientSecret": app["client_secret"], "subscriptions": []},
    )
    assert wrong.status_code == 401
    assert wrong.json()["code"] == "InvalidAuthentication"
    assert wrong.json()["message"]
    assert unknown.status_code == 401

    opened = await open_connection(sim, app)
    host = imsim_url.removeprefix("http://")
    assert opened["endpoint"] == f"ws://{host}/gateway/connect"
    assert opened["ticket"]
    assert opened["ticket"] != (await open_connection(sim, app))["ticket"]


async def test_ticket_is_single_use_and_bad_tickets_are_refused(sim, make_app, imsim_url):
    app = await make_app()
    opened = await open_connection(sim, app)
    async with connect(ws_url(opened), open_timeout=5):
        with pytest.raises(InvalidStatus):
            await connect(ws_url(opened), open_timeout=5)  # same ticket again
    with pytest.raises(InvalidStatus):
        await connect(
            f"ws://{imsim_url.removeprefix('http://')}/gateway/connect?ticket=made-up", open_timeout=5
        )


async def test_pushed_callback_carries_dingtalk_fields(sim, make_app, stream_peer, imsim_url):
    app = await make_app(robot_code="robot-xyz")
    peer = await stream_peer(app)
    before_ms = int(time.time() * 1000)
    sent = await send_user_message(
        sim, app, text="what is 2+2?", sender_staff_id="staff42", sender_nick="Alice"
    )
    frame = await peer.recv_type("CALLBACK")

    assert sent["delivered"] is True
    assert frame["specVersion"] == "1.0"
    [connection] = await sim_json(sim, f"/sim/apps/{app['client_id']}/connections")
    headers = frame["headers"]
    assert headers["appId"] == app["app_id"]
    assert headers["connectionId"] == connection["connection_id"]
    assert headers["contentType"] == "application/json"
    assert headers["messageId"] == sent["frame_id"]
    assert headers["topic"] == BOT_TOPIC
    assert abs(int(headers["time"]) - before_ms) < 10_000

    assert isinstance(frame["data"], str)
    data = json.loads(frame["data"])
    assert data["msgId"] == sent["msg_id"]
    assert data["conversationId"] == sent["conversation_id"]
    assert data["conversationType"] == "1"
    assert data["msgtype"] == "text"
    assert data["text"] == {"content": "what is 2+2?"}
    assert data["senderStaffId"] == "staff42"
    assert data["senderNick"] == "Alice"
    assert data["senderId"].startswith("$:LWCP_v1:$")
    assert data["chatbotUserId"].startswith("$:LWCP_v1:$")
    assert data["senderId"] != data["chatbotUserId"]
    assert data["senderCorpId"] == data["chatbotCorpId"] == app["corp_id"]
    assert data["robotCode"] == "robot-xyz"
    assert data["isAdmin"] is False
    assert data["isInAtList"] is True
    assert data["atUsers"] == []
    assert data["sessionWebhook"].startswith(f"{imsim_url}/robot/sendBySession?session=")
    assert abs(data["sessionWebhookExpiredTime"] - (before_ms + 90 * 60 * 1000)) < 10_000
    assert abs(data["createAt"] - before_ms) < 10_000
    assert "conversationTitle" not in data

    # The 1:1 conversation id is stable per user; another user gets another one.
    again = await send_user_message(sim, app, sender_staff_id="staff42")
    other = await send_user_message(sim, app, sender_staff_id="staff43")
    assert again["conversation_id"] == sent["conversation_id"]
    assert other["conversation_id"] != sent["conversation_id"]


async def test_group_message_mentions_the_bot(sim, make_app, stream_peer):
    app = await make_app()
    peer = await stream_peer(app)
    sent = await send_user_message(
        sim, app, conversation_type="2", conversation_title="Ops room", text="@bot status?"
    )
    data = json.loads((await peer.recv_type("CALLBACK"))["data"])
    assert data["conversationType"] == "2"
    assert data["conversationTitle"] == "Ops room"
    assert data["conversationId"] == sent["conversation_id"]
    assert data["atUsers"] == [{"dingtalkId": data["chatbotUserId"]}]

    # Same title → same group; an explicit id is used as given.
    same = await send_user_message(sim, app, conversation_type="2", conversation_title="Ops room")
    explicit = await send_user_message(sim, app, conversation_type="2", conversation_id="cidGivenByTest==")
    assert same["conversation_id"] == sent["conversation_id"]
    assert explicit["conversation_id"] == "cidGivenByTest=="
    no_group = await sim.post(
        f"/sim/apps/{app['client_id']}/messages", json={"text": "x", "conversation_type": "2"}
    )
    assert no_group.status_code == 422


async def test_ack_is_recorded(sim, make_app, stream_peer):
    app = await make_app()
    peer = await stream_peer(app)
    sent = await send_user_message(sim, app)
    frame = await peer.recv_type("CALLBACK")
    await peer.ack(frame, message="handled", data={"response": "fine"})

    acks = await wait_for(
        lambda: sim_json(sim, f"/sim/apps/{app['client_id']}/acks"), lambda acks: len(acks) == 1
    )
    ack = acks[0]
    assert ack["frame_id"] == frame["headers"]["messageId"]
    assert ack["kind"] == "callback"
    assert ack["msg_id"] == sent["msg_id"]
    assert ack["code"] == 200
    assert ack["message"] == "handled"
    assert json.loads(ack["data"]) == {"response": "fine"}
    assert ack["connection_id"] == frame["headers"]["connectionId"]
    [delivery] = await sim_json(sim, f"/sim/apps/{app['client_id']}/deliveries")
    assert delivery["acked"] is True and delivery["redelivery"] is False
    conversation = await sim_json(
        sim, f"/sim/apps/{app['client_id']}/conversations/{sent['conversation_id']}"
    )
    assert conversation["items"][0]["status"] == "acked"


async def test_unacked_message_is_redelivered_with_new_frame_id(sim, make_app, stream_peer):
    app = await make_app(redeliver_after=0.4)
    peer = await stream_peer(app)
    sent = await send_user_message(sim, app)
    first = await peer.recv_type("CALLBACK")
    second = await peer.recv_type("CALLBACK", within=5)
    assert second["headers"]["messageId"] != first["headers"]["messageId"]
    assert second["data"] == first["data"]
    assert json.loads(second["data"])["msgId"] == sent["msg_id"]

    # A non-200 ACK does not count: the message comes again.
    await peer.ack(second, code=500, message="boom")
    third = await peer.recv_type("CALLBACK", within=5)
    assert third["data"] == first["data"]
    await peer.ack(third)
    await peer.expect_silence(1.2)

    deliveries = await sim_json(sim, f"/sim/apps/{app['client_id']}/deliveries")
    # Not before redeliver_after (imsim's own clock: immune to a slow test process).
    assert deliveries[1]["at"] - deliveries[0]["at"] >= 350
    assert [d["redelivery"] for d in deliveries] == [False, True, True]
    assert [d["acked"] for d in deliveries] == [False, False, True]
    assert deliveries[1]["ack_code"] == 500
    assert {d["msg_id"] for d in deliveries} == {sent["msg_id"]}


async def test_message_sent_while_offline_is_queued_then_delivered(sim, make_app, stream_peer):
    app = await make_app()
    sent = await send_user_message(sim, app, text="anyone there?")
    assert sent["delivered"] is False
    assert sent["frame_id"] is None
    listed = await sim_json(sim, f"/sim/apps/{app['client_id']}")
    assert listed["queued"] == 1 and listed["connections"] == 0

    peer = await stream_peer(app)
    frame = await peer.recv_type("CALLBACK")
    assert json.loads(frame["data"])["msgId"] == sent["msg_id"]
    assert json.loads(frame["data"])["text"]["content"] == "anyone there?"
    listed = await sim_json(sim, f"/sim/apps/{app['client_id']}")
    assert listed["queued"] == 0 and listed["connections"] == 1


async def test_connection_without_bot_subscription_gets_no_bot_messages(sim, make_app, stream_peer):
    app = await make_app()
    peer = await stream_peer(app, subscriptions=[{"type": "EVENT", "topic": "*"}])
    sent = await send_user_message(sim, app)
    assert sent["delivered"] is False
    await peer.expect_silence(0.5)


async def test_each_push_goes_to_one_random_connection(sim, make_app, stream_peer):
    app = await make_app()
    peers = [await stream_peer(app), await stream_peer(app)]
    sent_ids = [(await send_user_message(sim, app, text=f"m{i}"))["msg_id"] for i in range(24)]
    deliveries = await wait_for(
        lambda: sim_json(sim, f"/sim/apps/{app['client_id']}/deliveries"), lambda d: len(d) == 24
    )
    per_connection = {}
    for delivery in deliveries:
        per_connection.setdefault(delivery["connection_id"], []).append(delivery["msg_id"])
    # Each message exactly once; both connections used (all 24 on one: p = 2^-23).
    assert sorted(d["msg_id"] for d in deliveries) == sorted(sent_ids)
    assert len(per_connection) == 2

    received = []
    for peer in peers:
        while True:
            try:
                frame = await peer.recv_type("CALLBACK", within=0.3)
            except TimeoutError:
                break
            received.append(json.loads(frame["data"])["msgId"])
    assert sorted(received) == sorted(sent_ids)


async def test_ping_must_echo_opaque(sim, make_app, stream_peer):
    app = await make_app(ping_interval=0.3)
    peer = await stream_peer(app)
    ping = await peer.recv_type("SYSTEM", topic="ping")
    assert ping["specVersion"] == "1.0"
    assert ping["headers"]["contentType"] == "application/json"
    opaque = json.loads(ping["data"])["opaque"]
    # The echo the SDK sends: the ping's own data back.
    await peer.websocket.send(
        json.dumps(
            {
                "code": 200,
                "headers": {"messageId": ping["headers"]["messageId"], "contentType": "application/json"},
                "message": "OK",
                "data": ping["data"],
            }
        )
    )
    wrong = await peer.recv_type("SYSTEM", topic="ping")
    await peer.ack(wrong, data={"opaque": "not-the-one"})

    pings = await wait_for(
        lambda: sim_json(sim, f"/sim/apps/{app['client_id']}/pings"),
        lambda pings: sum(p["acked"] for p in pings) == 2,
    )
    by_frame = {p["frame_id"]: p for p in pings}
    assert by_frame[ping["headers"]["messageId"]]["opaque"] == opaque
    assert by_frame[ping["headers"]["messageId"]]["echoed"] is True
    assert by_frame[wrong["headers"]["messageId"]]["echoed"] is False
    acks = await sim_json(sim, f"/sim/apps/{app['client_id']}/acks")
    assert {a["kind"] for a in acks} == {"ping"}


async def test_ping_interval_change_applies_at_run_time(sim, make_app, stream_peer):
    app = await make_app(ping_interval=3600)
    peer = await stream_peer(app)
    await peer.expect_silence(0.4, frame_type="SYSTEM")
    patched = await sim.patch(f"/sim/apps/{app['client_id']}", json={"ping_interval": 0.2})
    assert patched.json()["ping_interval"] == 0.2
    await peer.recv_type("SYSTEM", topic="ping", within=3)


async def test_disconnect_frame_then_close_after_grace(sim, make_app, stream_peer):
    app = await make_app(disconnect_grace=0.6)
    old = await stream_peer(app)
    new = await stream_peer(app)
    connections = await sim_json(sim, f"/sim/apps/{app['client_id']}/connections")
    old_id = connections[0]["connection_id"]

    response = await sim.post(
        f"/sim/apps/{app['client_id']}/disconnect", json={"connection_id": old_id, "reason": "rebalance"}
    )
    assert [s["connection_id"] for s in response.json()["sent"]] == [old_id]
    frame = await old.recv_type("SYSTEM", topic="disconnect")
    assert frame["type"] == "SYSTEM"
    assert json.loads(frame["data"]) == {"reason": "rebalance"}
    await old.ack(frame)

    # While the old socket waits out its grace, new pushes go to the other connection.
    for _ in range(5):
        await send_user_message(sim, app)
    for _ in range(5):
        await new.recv_type("CALLBACK")

    with pytest.raises(ConnectionClosed):
        while True:
            frame = await old.recv(within=5)
            assert frame["type"] != "CALLBACK", "a disconnecting socket got a bot message"
    closed = await wait_for(
        lambda: sim_json(sim, f"/sim/apps/{app['client_id']}/connections"),
        lambda conns: not next(c for c in conns if c["connection_id"] == old_id)["open"],
    )
    old_record = next(c for c in closed if c["connection_id"] == old_id)
    assert old_record["close_reason"] == "closed_after_disconnect"
    # Closed only once the grace was over.
    assert old_record["closed_at"] - old_record["disconnect_sent_at"] >= 550
    acks = await sim_json(sim, f"/sim/apps/{app['client_id']}/acks")
    assert "disconnect" in {a["kind"] for a in acks}


async def test_disconnect_all_and_unknown_connection(sim, make_app, stream_peer):
    app = await make_app(disconnect_grace=0.2)
    peers = [await stream_peer(app), await stream_peer(app)]
    response = await sim.post(f"/sim/apps/{app['client_id']}/disconnect")
    assert len(response.json()["sent"]) == 2
    for peer in peers:
        await peer.recv_type("SYSTEM", topic="disconnect")
    await wait_for(lambda: sim_json(sim, f"/sim/apps/{app['client_id']}"), lambda a: a["connections"] == 0)
    missing = await sim.post(f"/sim/apps/{app['client_id']}/disconnect", json={"connection_id": "nope"})
    assert missing.status_code == 404


async def test_raw_data_is_sent_verbatim(sim, make_app, stream_peer):
    app = await make_app()
    peer = await stream_peer(app)
    raw = "this is {not json"
    sent = await send_user_message(sim, app, raw_data=raw)
    frame = await peer.recv_type("CALLBACK")
    assert frame["data"] == raw
    assert frame["headers"]["messageId"] == sent["frame_id"]
    await peer.ack(frame, code=400, message="bad payload")
    acks = await wait_for(lambda: sim_json(sim, f"/sim/apps/{app['client_id']}/acks"), lambda a: len(a) == 1)
    assert acks[0]["msg_id"] == sent["msg_id"] and acks[0]["code"] == 400


async def test_unparsable_client_frame_is_recorded_not_fatal(sim, make_app, stream_peer):
    app = await make_app()
    peer: StreamPeer = await stream_peer(app)
    await peer.websocket.send("garbage")
    acks = await wait_for(lambda: sim_json(sim, f"/sim/apps/{app['client_id']}/acks"), lambda a: len(a) == 1)
    assert acks[0]["kind"] == "unknown" and acks[0]["data"] == "garbage"
    # The connection still works.
    await send_user_message(sim, app)
    await asyncio.wait_for(peer.recv_type("CALLBACK"), 5)
