"""Feishu's long connection in imsim: the endpoint call, pbbp2 frames (pings, events, chunked
payloads), ACKs, redelivery with the same event_id, several connections, refusals and faults."""

import json

import pytest
from feishu_testkit import CONTROL, DATA, OpenApi, endpoint, headers_of, send_message
from imsim_testkit import PRESET_FEISHU_APP, sim_json, wait_for
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

pytestmark = pytest.mark.timeout(60)


def _path(app, suffix=""):
    return f"/sim/feishu/apps/{app['app_id']}{suffix}"


async def test_endpoint_hands_out_a_url_and_client_config(sim, make_feishu_app):
    app = await make_feishu_app(ping_interval=7, reconnect_count=3, reconnect_interval=11, reconnect_nonce=2)
    opened = await endpoint(sim, app)
    assert opened["code"] == 0
    assert opened["data"]["ClientConfig"] == {
        "ReconnectCount": 3,
        "ReconnectInterval": 11,
        "ReconnectNonce": 2,
        "PingInterval": 7,
    }
    url = opened["data"]["URL"]
    assert url.startswith("ws://") and "device_id=" in url and "service_id=" in url

    wrong = await endpoint(sim, app, secret="nope")
    unknown = await endpoint(sim, {"app_id": "cli_nobody", "app_secret": "x"})
    assert wrong["code"] == unknown["code"] == 1000040345
    counters = await sim_json(sim, _path(app, "/counters"))
    assert counters["connections"]["refused"] == {"wrong_credentials": 1}


async def test_start_up_app_is_a_feishu_app(sim):
    opened = await endpoint(sim, {"app_id": PRESET_FEISHU_APP[0], "app_secret": PRESET_FEISHU_APP[1]})
    assert opened["code"] == 0
    platforms = {p["name"]: p for p in await sim_json(sim, "/sim/platforms")}
    assert PRESET_FEISHU_APP[0] in [a["app_id"] for a in platforms["feishu"]["apps"]]
    assert PRESET_FEISHU_APP[0] not in [a["app_id"] for a in platforms["dingtalk"]["apps"]]


async def test_a_url_opens_one_connection_once(sim, make_feishu_app):
    app = await make_feishu_app()
    url = (await endpoint(sim, app))["data"]["URL"]
    async with connect(url, open_timeout=5):
        with pytest.raises(InvalidStatus) as refused:
            await connect(url, open_timeout=5)
    headers = refused.value.response.headers
    assert headers["handshake-status"] == "403"
    assert headers["handshake-msg"]


async def test_ping_is_answered_with_a_pong_carrying_the_client_config(sim, make_feishu_app, feishu_peer):
    app = await make_feishu_app(ping_interval=9)
    peer = await feishu_peer(app)
    await peer.ping()
    pong = await peer.recv_frame()
    assert pong.method == CONTROL
    assert headers_of(pong) == {"type": "pong"}
    assert json.loads(pong.payload)["PingInterval"] == 9
    assert pong.service == peer.service_id
    counters = await sim_json(sim, _path(app, "/counters"))
    assert counters["pings"] == {"received": 1, "pongs": 1}


async def test_event_frame_payload_and_ack(sim, make_feishu_app, feishu_peer):
    app = await make_feishu_app()
    peer = await feishu_peer(app)
    sent = await send_message(sim, app, text="hi", sender_id="u1", sender_name="Una")
    assert sent["delivered"] is True
    [frame], event = await peer.recv_event()
    headers = headers_of(frame)
    assert frame.method == DATA
    assert headers["type"] == "event" and headers["sum"] == "1" and headers["seq"] == "0"
    assert headers["message_id"] == sent["frame_id"] and headers["trace_id"]
    assert event["schema"] == "2.0"
    assert event["header"]["event_id"] == sent["event_id"]
    assert event["header"]["event_type"] == "im.message.receive_v1"
    assert event["header"]["app_id"] == app["app_id"]
    assert event["header"]["tenant_key"] == app["tenant_key"]
    assert event["header"]["token"] == app["verification_token"]
    sender = event["event"]["sender"]
    assert sender["sender_type"] == "user" and sender["sender_id"]["user_id"] == "u1"
    assert sender["sender_id"]["open_id"].startswith("ou_") and sender["sender_id"]["union_id"].startswith(
        "on_"
    )
    message = event["event"]["message"]
    assert message["message_id"] == sent["message_id"] and message["message_id"].startswith("om_")
    assert message["chat_id"] == sent["chat_id"] and message["chat_type"] == "p2p"
    assert message["message_type"] == "text" and json.loads(message["content"]) == {"text": "hi"}
    assert "mentions" not in message

    await peer.ack(frame, biz_rt="12")
    view = await wait_for(
        lambda: sim_json(sim, _path(app, f"/events/{sent['event_id']}")), lambda e: e["status"] == "acked"
    )
    [ack] = view["acks"]
    assert ack["code"] == 200 and ack["late"] is False and ack["biz_rt"] == "12"
    counters = await sim_json(sim, _path(app, "/counters"))
    assert counters["acks"] == {"ok": 1, "late": 0, "failed": 0, "unknown": 0}
    assert counters["events"]["pushes"] == 1 and counters["events"]["redeliveries"] == 0


async def test_group_message_mentions_the_bot_as_user_1(sim, make_feishu_app, feishu_peer):
    app = await make_feishu_app(name="Helper")
    peer = await feishu_peer(app)
    await send_message(sim, app, text="status?", group="Ops")
    _frames, event = await peer.recv_event()
    message = event["event"]["message"]
    assert message["chat_type"] == "group"
    assert json.loads(message["content"]) == {"text": "@_user_1 status?"}
    [mention] = message["mentions"]
    assert mention["key"] == "@_user_1" and mention["name"] == "Helper"
    assert mention["id"]["open_id"] == app["bot_open_id"]

    await send_message(sim, app, text="no mention", group="Ops", mention=False)
    _frames, event = await peer.recv_event()
    assert "mentions" not in event["event"]["message"]
    assert json.loads(event["event"]["message"]["content"]) == {"text": "no mention"}


async def test_large_payloads_are_split_into_chunks(sim, make_feishu_app, feishu_peer):
    app = await make_feishu_app(chunk_size=100)
    peer = await feishu_peer(app)
    sent = await send_message(sim, app, text="x" * 500)
    frames, event = await peer.recv_event()
    assert len(frames) > 5
    assert {headers_of(f)["sum"] for f in frames} == {str(len(frames))}
    assert sorted(int(headers_of(f)["seq"]) for f in frames) == list(range(len(frames)))
    assert {headers_of(f)["message_id"] for f in frames} == {sent["frame_id"]}
    assert json.loads(event["event"]["message"]["content"])["text"] == "x" * 500
    await peer.ack(frames[0])
    counters = await wait_for(lambda: sim_json(sim, _path(app, "/counters")), lambda c: c["acks"]["ok"] == 1)
    assert counters["events"]["frames"] == len(frames)


async def test_unacked_event_is_redelivered_with_its_event_id_until_the_schedule_ends(
    sim, make_feishu_app, feishu_peer
):
    app = await make_feishu_app(ack_wait=0.3, redeliver_schedule=[0.3, 0.3])
    peer = await feishu_peer(app)
    sent = await send_message(sim, app, text="once")
    pushes = [await peer.recv_event() for _ in range(3)]
    assert {event["header"]["event_id"] for _f, event in pushes} == {sent["event_id"]}
    assert len({headers_of(frames[0])["message_id"] for frames, _e in pushes}) == 3
    view = await wait_for(
        lambda: sim_json(sim, _path(app, f"/events/{sent['event_id']}")), lambda e: e["abandoned"]
    )
    assert [d["kind"] for d in view["deliveries"]] == ["push", "redelivery", "redelivery"]
    await peer.expect_no_data(0.8)
    counters = await sim_json(sim, _path(app, "/counters"))
    assert counters["events"]["redeliveries"] == 2 and counters["events"]["abandoned"] == 1


async def test_an_ack_after_the_wait_is_late_and_the_event_comes_again(sim, make_feishu_app, feishu_peer):
    app = await make_feishu_app(ack_wait=1.0, redeliver_schedule=[0.5, 60])
    peer = await feishu_peer(app)
    sent = await send_message(sim, app, text="slow")
    [first], _event = await peer.recv_event()
    [again], event = await peer.recv_event()  # the wait is over: the first ACK comes too late
    assert event["header"]["event_id"] == sent["event_id"]
    await peer.ack(first)
    await peer.ack(again)
    view = await wait_for(
        lambda: sim_json(sim, _path(app, f"/events/{sent['event_id']}")), lambda e: len(e["acks"]) == 2
    )
    assert [a["late"] for a in view["acks"]] == [True, False]
    assert view["status"] == "acked"
    counters = await sim_json(sim, _path(app, "/counters"))
    assert counters["acks"]["late"] == 1 and counters["acks"]["ok"] == 1


async def test_a_failed_ack_code_does_not_count(sim, make_feishu_app, feishu_peer):
    app = await make_feishu_app(ack_wait=0.3, redeliver_schedule=[0.2])
    peer = await feishu_peer(app)
    sent = await send_message(sim, app)
    [frame], _event = await peer.recv_event()
    await peer.ack(frame, code=500)
    _frames, event = await peer.recv_event()
    assert event["header"]["event_id"] == sent["event_id"]
    counters = await sim_json(sim, _path(app, "/counters"))
    assert counters["acks"]["failed"] == 1 and counters["acks"]["ok"] == 0


async def test_events_wait_for_a_connection(sim, make_feishu_app, feishu_peer):
    app = await make_feishu_app()
    sent = await send_message(sim, app, text="early")
    assert sent["delivered"] is False
    assert (await sim_json(sim, _path(app)))["queued"] == 1
    peer = await feishu_peer(app)
    _frames, event = await peer.recv_event()
    assert event["header"]["event_id"] == sent["event_id"]


async def test_each_event_goes_to_one_of_several_connections(sim, make_feishu_app, feishu_peer):
    app = await make_feishu_app(fault_config={"seed": 7})
    peers = [await feishu_peer(app) for _ in range(3)]
    for i in range(12):
        await send_message(sim, app, text=f"m{i}")
    deliveries = await wait_for(lambda: sim_json(sim, _path(app, "/deliveries")), lambda d: len(d) == 12)
    by_connection = {d["connection_id"] for d in deliveries}
    assert by_connection <= {p.device_id for p in peers} and len(by_connection) > 1
    for peer in peers:
        count = sum(d["connection_id"] == peer.device_id for d in deliveries)
        for _ in range(count):
            await peer.recv_event()
        await peer.expect_no_data(0.2)


async def test_too_many_connections_are_refused_with_514(sim, make_feishu_app, feishu_peer):
    app = await make_feishu_app(max_connections=1)
    await feishu_peer(app)
    url = (await endpoint(sim, app))["data"]["URL"]
    with pytest.raises(InvalidStatus) as refused:
        await connect(url, open_timeout=5)
    headers = refused.value.response.headers
    assert headers["handshake-status"] == "514"
    assert headers["handshake-autherrcode"] == "1000040350"
    counters = await sim_json(sim, _path(app, "/counters"))
    assert counters["connections"]["refused"] == {"too_many_connections": 1}


async def test_forced_and_injected_duplicates_keep_the_event_id(sim, make_feishu_app, feishu_peer):
    app = await make_feishu_app(fault_config={"duplicate_rate": 1.0})
    peer = await feishu_peer(app)
    sent = await send_message(sim, app)
    pushed = [await peer.recv_event() for _ in range(2)]
    assert [e["header"]["event_id"] for _f, e in pushed] == [sent["event_id"]] * 2
    for frames, _e in pushed:
        await peer.ack(frames[0])
    forced = await sim.post(_path(app, f"/events/{sent['event_id']}/redeliver"))
    assert forced.json()["kind"] == "forced"
    _frames, event = await peer.recv_event()
    assert event["header"]["event_id"] == sent["event_id"]
    counters = await sim_json(sim, _path(app, "/counters"))
    assert counters["events"]["injected_duplicates"] == 1 and counters["events"]["forced_duplicates"] == 1


async def test_dropped_and_closed_connections(sim, make_feishu_app, feishu_peer):
    app = await make_feishu_app()
    dropped, closed = await feishu_peer(app), await feishu_peer(app)
    answer = await sim.post(_path(app, "/connections/drop"), json={"connection_id": dropped.device_id})
    assert answer.json() == {"dropped": [dropped.device_id]}
    with pytest.raises(ConnectionClosed) as gone:
        await dropped.recv_frame(5)
    assert gone.value.rcvd is None  # no close frame: the TCP connection just ended
    answer = await sim.post(_path(app, "/connections/close"), json={"connection_id": closed.device_id})
    assert answer.json() == {"closed": [closed.device_id]}
    with pytest.raises(ConnectionClosed) as ended:
        await closed.recv_frame(5)
    assert ended.value.rcvd is not None and ended.value.rcvd.code == 1001
    counters = await sim_json(sim, _path(app, "/counters"))
    assert counters["connections"]["dropped"] == 1 and counters["connections"]["open"] == 0


async def test_periodic_disconnects_and_half_dead_sockets(sim, make_feishu_app, feishu_peer):
    app = await make_feishu_app(ack_wait=0.3, redeliver_schedule=[0.3] * 20)
    peer = await feishu_peer(app)
    await sim.patch(_path(app, "/faults/config"), json={"half_dead": True})
    sent = await send_message(sim, app)
    await peer.expect_no_data(0.5)
    view = await sim_json(sim, _path(app, f"/events/{sent['event_id']}"))
    assert view["deliveries"][0]["swallowed"] is True
    await sim.patch(_path(app, "/faults/config"), json={"half_dead": False})
    frames, event = await peer.recv_event()  # a redelivery gets through again
    assert event["header"]["event_id"] == sent["event_id"]
    await peer.ack(frames[0])
    await sim.patch(_path(app, "/faults/config"), json={"disconnect_every": 0.3})
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await peer.recv_frame(5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    counters = await wait_for(
        lambda: sim_json(sim, _path(app, "/counters")),
        lambda c: c["connections"]["periodic_disconnects"] == 1,
    )
    assert counters["events"]["swallowed"] >= 1 and counters["acks"]["ok"] == 1


async def test_endpoint_failures_can_be_injected(sim, make_feishu_app):
    app = await make_feishu_app(fault_config={"endpoint_failure": "system_busy", "endpoint_failure_count": 1})
    assert (await endpoint(sim, app))["code"] == 1
    assert (await endpoint(sim, app))["code"] == 0
    await sim.patch(_path(app, "/faults/config"), json={"endpoint_failure": "server_error"})
    failed = await sim.post(
        "/callback/ws/endpoint", json={"AppID": app["app_id"], "AppSecret": app["app_secret"]}
    )
    assert failed.status_code == 500
    counters = await sim_json(sim, _path(app, "/counters"))
    assert counters["connections"]["refused"] == {"endpoint_server_error": 1, "endpoint_system_busy": 1}


async def test_verbatim_payloads_for_what_a_bot_cannot_read(sim, make_feishu_app, feishu_peer):
    app = await make_feishu_app()
    peer = await feishu_peer(app)
    garbage = await send_message(sim, app, text=None, raw_payload="not json at all")
    frame = await peer.recv_data()
    assert frame.payload == b"not json at all"
    assert headers_of(frame)["message_id"] == garbage["frame_id"]
    await peer.ack(frame)

    user = await sim_json(sim, _path(app, "/users/u-odd"))
    odd = {
        "schema": "2.0",
        "header": {"event_id": "ev-odd-1", "event_type": "im.message.receive_v1"},
        "event": {
            "sender": {"sender_id": {"open_id": user["open_id"], "user_id": "u-odd"}},
            "message": {
                "message_id": "om_odd_1",
                "chat_id": user["p2p_chat_id"],
                "message_type": "hologram",
                "content": "{}",
            },
        },
    }
    sent = await send_message(sim, app, text=None, raw_event=odd, sender_id="u-odd")
    assert (sent["event_id"], sent["message_id"]) == ("ev-odd-1", "om_odd_1")
    assert sent["chat_id"] == user["p2p_chat_id"]
    _frames, event = await peer.recv_event()
    assert event == odd
    # The bot can still answer the message the payload names.
    api = await OpenApi.for_app(sim, app)
    assert (await api.reply("om_odd_1", "text", {"text": "I cannot read that"})).json()["code"] == 0
    view = await sim_json(sim, _path(app, "/events/om_odd_1"))
    assert [(a["text"], a["link"]) for a in view["answers"]] == [("I cannot read that", "reply")]
