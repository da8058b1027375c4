"""`/counters` after a known sequence of events, and `/reset` of one app or of everything."""

import asyncio
import json

import pytest
from imsim_testkit import (
    CardApi,
    access_token,
    message_path,
    patch_faults,
    send_user_message,
    sim_json,
    wait_for,
)

pytestmark = pytest.mark.timeout(30)


async def counters(sim, app):
    return await sim_json(sim, f"/sim/apps/{app['client_id']}/counters")


async def test_counters_add_up(sim, make_app, stream_peer):
    app = await make_app(ping_interval=0.3, redeliver_after=0.6)
    peer = await stream_peer(app)
    quick = await send_user_message(sim, app, text="quick", sender_staff_id="u1")
    frame = await peer.recv_type("CALLBACK")
    await peer.ack(frame)
    slow = await send_user_message(sim, app, text="slow", sender_staff_id="u1")
    first_slow = await peer.recv_type("CALLBACK")
    await peer.ack(first_slow, code=500)  # not 200: redelivered
    redelivered = await peer.recv_type("CALLBACK", within=5)
    await asyncio.sleep(0.25)
    await peer.ack(redelivered)
    ping = await peer.recv_type("SYSTEM", topic="ping", within=5)
    await peer.ack(ping, data=json.loads(ping["data"]))
    await sim.post(message_path(app, quick["msg_id"], "/redeliver"))
    await peer.ack(await peer.recv_type("CALLBACK"))

    api = await CardApi.for_app(sim, app)
    assert (await api.create_and_deliver("k1", staff_id="u1")).status_code == 200
    await patch_faults(sim, app, card_qps_limit=1)
    assert (await api.stream("k1", "x")).status_code == 403
    await sim.post(f"/sim/apps/{app['client_id']}/tokens/expire")
    assert (await api.stream("k1", "x")).status_code == 401
    webhook = json.loads(frame["data"])["sessionWebhook"]
    await sim.post(webhook, json={"msgtype": "text", "text": {"content": "hi"}})

    counted = await wait_for(lambda: counters(sim, app), lambda c: c["acks"]["callback"] == 4)
    assert counted["stream"] == {
        "messages": 2,
        "pushes": 4,
        "redeliveries": 1,
        "forced_duplicates": 1,
        "swallowed": 0,
    }
    assert counted["acks"]["callback"] == 4 and counted["acks"]["callback_ok"] == 3
    assert counted["acks"]["ping"] >= 1 and counted["acks"]["unknown"] == 0
    latency = counted["ack_latency_ms"]
    assert latency["count"] == 4
    assert 240 <= latency["max"] < 5000  # the ACK that waited 250 ms
    assert latency["p50"] <= latency["p99"] <= latency["max"]
    assert counted["pings"]["sent"] >= counted["pings"]["acked"] >= counted["pings"]["echoed"] >= 1
    assert counted["connections"]["opened"] == 1 and counted["connections"]["open"] == 1
    assert counted["connections"]["dropped"] == 0

    calls = counted["api_calls"]
    assert calls["by_route"] == {
        "POST /v1.0/gateway/connections/open": 1,
        "POST /v1.0/oauth2/accessToken": 1,
        "POST /v1.0/card/instances/createAndDeliver": 1,
        "PUT /v1.0/card/streaming": 2,
        "POST /robot/sendBySession": 1,
    }
    assert calls["by_status"] == {"200": 4, "401": 1, "403": 1}
    assert calls["by_outcome"] == {"ok": 4, "qps_limited": 1, "unauthorized": 1}
    assert calls["total"] == 6
    assert counted["throttled"] == {"403": 1, "429": 0}
    assert counted["tokens_issued"] == 1

    message = await sim_json(sim, message_path(app, slow["msg_id"]))
    assert [d["ack_code"] for d in message["deliveries"]] == [500, 200]
    assert all(d["ack_latency_ms"] is not None for d in message["deliveries"])


async def test_percentiles_use_nearest_rank():
    from imsim.counters import percentile

    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50 and percentile(values, 0.99) == 99
    assert percentile([7.0], 0.99) == 7 and percentile([], 0.5) is None


async def test_reset_forgets_records_keeps_app_and_connections(sim, make_app, stream_peer):
    app = await make_app(redeliver_after=30)
    await patch_faults(sim, app, card_latency_ms=1)
    fault = {"path": "/v1.0/robot/groupMessages/send", "times": 1}
    await sim.post(f"/sim/apps/{app['client_id']}/faults", json=fault)
    peer = await stream_peer(app)
    old = await send_user_message(sim, app, sender_staff_id="u1")
    old_frame = await peer.recv_type("CALLBACK")
    api = await CardApi.for_app(sim, app)
    await api.create_and_deliver("before-reset", staff_id="u1")

    response = await sim.post(f"/sim/apps/{app['client_id']}/reset")
    assert response.json() == {"reset": [app["client_id"]]}
    base = f"/sim/apps/{app['client_id']}"
    for records in ("conversations", "cards", "acks", "deliveries", "pings", "api-calls", "messages"):
        assert await sim_json(sim, f"{base}/{records}") == [], records
    counted = await sim_json(sim, f"{base}/counters")
    assert counted["stream"]["messages"] == 0 and counted["api_calls"]["total"] == 0
    assert counted["connections"]["open"] == 1  # the connection stays
    assert (await sim_json(sim, f"{base}/faults/config"))["card_latency_ms"] == 1  # config stays
    assert len(await sim_json(sim, f"{base}/faults")) == 1  # one-shot faults stay armed
    assert (await sim.get(message_path(app, old["msg_id"]))).status_code == 404
    # The old message's webhook is gone with its conversation; the old card too.
    webhook = json.loads(old_frame["data"])["sessionWebhook"]
    stale = await sim.post(webhook, json={"msgtype": "text", "text": {"content": "late"}})
    assert stale.json()["errcode"] != 0
    assert (await api.stream("before-reset", "x")).status_code in (400, 404)

    # Same socket, same token: the app works on.
    fresh = await send_user_message(sim, app, text="after reset")
    frame = await peer.recv_type("CALLBACK")
    assert json.loads(frame["data"])["msgId"] == fresh["msg_id"]
    await peer.ack(frame)
    await peer.ack(old_frame)  # a frame from before the reset is not a known delivery any more
    acks = await wait_for(lambda: sim_json(sim, f"{base}/acks"), lambda a: len(a) == 2)
    assert [a["kind"] for a in acks] == ["callback", "unknown"]

    await sim.post(f"{base}/reset?faults=true")
    assert (await sim_json(sim, f"{base}/faults/config"))["card_latency_ms"] == 0
    assert await sim_json(sim, f"{base}/faults") == []


async def test_reset_everything(sim, make_app):
    apps = [await make_app(), await make_app()]
    for app in apps:
        await send_user_message(sim, app)
        await access_token(sim, app)
    response = await sim.post("/sim/reset")
    assert {a["client_id"] for a in apps} <= set(response.json()["reset"])
    for app in apps:
        assert await sim_json(sim, f"/sim/apps/{app['client_id']}/conversations") == []
        assert (await sim_json(sim, f"/sim/apps/{app['client_id']}/counters"))["tokens_issued"] == 0
    # Apps are kept.
    listed = {a["client_id"] for a in await sim_json(sim, "/sim/apps")}
    assert {a["client_id"] for a in apps} <= listed
