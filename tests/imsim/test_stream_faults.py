"""Stream faults: periodic disconnects, hard drops, half-dead sockets, forced duplicates, and
open-connection failures."""

import asyncio
import json

import pytest
from imsim_testkit import (
    StreamPeer,
    message_path,
    open_connection,
    patch_faults,
    send_user_message,
    sim_json,
    wait_for,
    ws_url,
)
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

pytestmark = pytest.mark.timeout(40)


async def connections(sim, app):
    return await sim_json(sim, f"/sim/apps/{app['client_id']}/connections")


async def counters(sim, app):
    return await sim_json(sim, f"/sim/apps/{app['client_id']}/counters")


async def pong_within(peer: StreamPeer, seconds: float) -> bool:
    """Whether a websocket-level ping gets its pong in time."""
    waiter = await peer.websocket.ping()
    try:
        await asyncio.wait_for(asyncio.shield(waiter), seconds)
    except TimeoutError:
        return False
    return True


async def test_periodic_disconnect(sim, make_app, stream_peer):
    app = await make_app(disconnect_grace=0.3, ping_interval=3600)
    await patch_faults(sim, app, disconnect_every=0.5)
    peer = await stream_peer(app)
    frame = await peer.recv_type("SYSTEM", topic="disconnect", within=5)
    assert json.loads(frame["data"]) == {"reason": "rebalance"}
    await peer.ack(frame)
    with pytest.raises(ConnectionClosed):
        while True:
            await peer.recv(within=5)
    [record] = await wait_for(lambda: connections(sim, app), lambda conns: not conns[0]["open"])
    # Not before the period, and closed once the grace was over.
    assert record["disconnect_sent_at"] - record["opened_at"] >= 450
    assert record["close_reason"] == "closed_after_disconnect"

    # Every connection gets its own period; switching it off stops the rebalancing.
    second = await stream_peer(app)
    await second.recv_type("SYSTEM", topic="disconnect", within=5)
    third = await stream_peer(app)
    await patch_faults(sim, app, disconnect_every=None)
    await third.expect_silence(1.0, frame_type="SYSTEM")
    counted = await counters(sim, app)
    assert counted["connections"]["periodic_disconnects"] == 2
    assert counted["connections"]["disconnects_sent"] == 2


async def test_periodic_disconnect_switched_on_counts_from_then(sim, make_app, stream_peer):
    app = await make_app(disconnect_grace=5, ping_interval=3600)
    peer = await stream_peer(app)
    await asyncio.sleep(0.8)  # already open longer than the period about to be set
    loop = asyncio.get_running_loop()
    switched_on = loop.time()
    await patch_faults(sim, app, disconnect_every=0.6)
    await peer.recv_type("SYSTEM", topic="disconnect", within=5)
    assert loop.time() - switched_on >= 0.5


async def test_hard_drop_sends_no_close_frame_and_message_is_redelivered(sim, make_app, stream_peer):
    app = await make_app(redeliver_after=0.5)
    first = await stream_peer(app)
    sent = await send_user_message(sim, app)
    await first.recv_type("CALLBACK")  # and never ACKed
    [connection] = await connections(sim, app)

    response = await sim.post(f"/sim/apps/{app['client_id']}/connections/drop", json={})
    assert response.json() == {"dropped": [connection["connection_id"]]}
    with pytest.raises(ConnectionClosedError) as closed:
        while True:
            await first.recv(within=5)
    assert closed.value.rcvd is None, "a hard drop must not send a close frame"
    [record] = await connections(sim, app)
    assert record["open"] is False and record["close_reason"] == "dropped"

    second = await stream_peer(app)
    frame = await second.recv_type("CALLBACK", within=5)
    assert json.loads(frame["data"])["msgId"] == sent["msg_id"]
    assert frame["headers"]["messageId"] != sent["frame_id"]
    counted = await counters(sim, app)
    assert counted["connections"]["dropped"] == 1
    assert counted["connections"]["opened"] == 2 and counted["connections"]["open"] == 1
    assert counted["stream"]["redeliveries"] == 1

    missing = await sim.post(f"/sim/apps/{app['client_id']}/connections/drop", json={"connection_id": "nope"})
    assert missing.status_code == 404


async def test_half_dead_sockets_pass_nothing_until_revived(sim, make_app, stream_peer):
    app = await make_app(ping_interval=0.2, redeliver_after=0.5)
    peer = await stream_peer(app)
    await peer.recv_type("SYSTEM", topic="ping")  # healthy to begin with
    assert await pong_within(peer, 2)

    await patch_faults(sim, app, half_dead=True)
    await asyncio.sleep(0.1)  # a ping already on its way may still arrive
    while True:
        try:
            await peer.recv(within=0.05)
        except TimeoutError:
            break
    sent = await send_user_message(sim, app)
    assert sent["delivered"] is True  # as far as the server knows
    assert not await pong_within(peer, 0.5), "a half-dead socket must not answer websocket pings"
    with pytest.raises(TimeoutError):
        await peer.recv(within=1.0)  # no callback, no SYSTEM ping, nothing
    # What the client sends is lost too.
    await peer.ack({"headers": {"messageId": sent["frame_id"]}})
    await asyncio.sleep(0.2)
    assert await sim_json(sim, f"/sim/apps/{app['client_id']}/acks") == []
    [record] = await connections(sim, app)
    assert record["open"] is True and record["frames_lost"] >= 2
    deliveries = await sim_json(sim, f"/sim/apps/{app['client_id']}/deliveries")
    assert len(deliveries) >= 2 and all(d["swallowed"] for d in deliveries)  # redelivered, lost again

    await patch_faults(sim, app, half_dead=False)
    frame = await peer.recv_type("CALLBACK", within=5)
    assert json.loads(frame["data"])["msgId"] == sent["msg_id"]
    await peer.ack(frame)
    await peer.recv_type("SYSTEM", topic="ping", within=5)
    assert await pong_within(peer, 2)
    counted = await counters(sim, app)
    assert counted["stream"]["swallowed"] == len(deliveries)
    assert counted["acks"]["callback_ok"] == 1


async def test_half_dead_lever_spares_new_connections(sim, make_app, stream_peer):
    app = await make_app(redeliver_after=0.3)
    await patch_faults(sim, app, seed=11)
    dead = await stream_peer(app)
    [dead_record] = await connections(sim, app)
    response = await sim.post(f"/sim/apps/{app['client_id']}/connections/half-dead", json={})
    assert response.json() == {"half_dead": [dead_record["connection_id"]]}
    healthy = await stream_peer(app)

    sent = {(await send_user_message(sim, app, text=f"m{i}"))["msg_id"] for i in range(6)}
    received: set[str] = set()
    while received != sent:
        frame = await healthy.recv_type("CALLBACK", within=10)
        received.add(json.loads(frame["data"])["msgId"])
        await healthy.ack(frame)
    with pytest.raises(TimeoutError):
        await dead.recv(within=0.3)

    deliveries = await sim_json(sim, f"/sim/apps/{app['client_id']}/deliveries")
    swallowed = [d for d in deliveries if d["swallowed"]]
    assert swallowed, "with two connections some pushes must have gone to the half-dead one"
    assert {d["connection_id"] for d in swallowed} == {dead_record["connection_id"]}
    records = {c["connection_id"]: c for c in await connections(sim, app)}
    assert records[dead_record["connection_id"]]["half_dead"] is True
    assert records[dead_record["connection_id"]]["open"] is True


async def test_forced_duplicate_of_an_acked_message(sim, make_app, stream_peer):
    app = await make_app()
    peer = await stream_peer(app)
    sent = await send_user_message(sim, app, text="only once please")
    first = await peer.recv_type("CALLBACK")
    await peer.ack(first)
    await wait_for(lambda: sim_json(sim, message_path(app, sent["msg_id"])), lambda m: m["status"] == "acked")

    response = await sim.post(message_path(app, sent["msg_id"], "/redeliver"))
    assert response.status_code == 200, response.text
    duplicate = await peer.recv_type("CALLBACK")
    assert duplicate["data"] == first["data"]
    assert duplicate["headers"]["messageId"] != first["headers"]["messageId"]
    assert response.json()["frame_id"] == duplicate["headers"]["messageId"]
    assert response.json()["forced"] is True and response.json()["redelivery"] is True
    await peer.ack(duplicate)

    message = await wait_for(
        lambda: sim_json(sim, message_path(app, sent["msg_id"])), lambda m: len(m["acks"]) == 2
    )
    assert message["status"] == "acked"
    assert [d["forced"] for d in message["deliveries"]] == [False, True]
    counted = await counters(sim, app)
    assert counted["stream"]["forced_duplicates"] == 1 and counted["stream"]["redeliveries"] == 0
    assert counted["stream"]["pushes"] == 2

    unknown = await sim.post(message_path(app, "msgNope==", "/redeliver"))
    assert unknown.status_code == 404
    await peer.websocket.close()
    await wait_for(lambda: connections(sim, app), lambda conns: not conns[0]["open"])
    nobody = await sim.post(message_path(app, sent["msg_id"], "/redeliver"))
    assert nobody.status_code == 409


async def _open(sim, app, secret=None):
    return await sim.post(
        "/v1.0/gateway/connections/open",
        json={
            "clientId": app["client_id"],
            "clientSecret": secret or app["client_secret"],
            "subscriptions": [{"type": "CALLBACK", "topic": "/v1.0/im/bot/messages/get"}],
        },
    )


async def test_open_failures_answer_5xx_for_the_next_n_opens(sim, make_app):
    app = await make_app()
    config = await patch_faults(
        sim, app, open_failure="server_error", open_failure_status=502, open_failure_count=2
    )
    assert config["open_failure_count"] == 2
    first, second, third = [await _open(sim, app) for _ in range(3)]
    assert [first.status_code, second.status_code, third.status_code] == [502, 502, 200]
    assert first.json()["code"] and first.json()["requestid"]
    async with connect(ws_url(third.json()), open_timeout=5):
        pass
    config = await sim_json(sim, f"/sim/apps/{app['client_id']}/faults/config")
    assert config["open_failure"] == "none" and config["open_failure_count"] is None
    assert (await counters(sim, app))["connections"]["opens_refused"] == {"server_error": 2}


async def test_open_failures_reject_good_credentials(sim, make_app):
    app = await make_app()
    await patch_faults(sim, app, open_failure="bad_credentials")
    for _ in range(3):  # no count: until switched off
        refused = await _open(sim, app)
        assert refused.status_code == 401 and refused.json()["code"] == "InvalidAuthentication"
    await patch_faults(sim, app, open_failure="none")
    assert (await _open(sim, app)).status_code == 200
    wrong = await _open(sim, app, secret="wrong")
    assert wrong.status_code == 401
    refused = (await counters(sim, app))["connections"]["opens_refused"]
    assert refused == {"bad_credentials": 3, "wrong_credentials": 1}


async def test_open_failures_hand_out_a_ticket_the_gateway_refuses(sim, make_app):
    app = await make_app()
    await patch_faults(sim, app, open_failure="ticket_refused", open_failure_count=1)
    opened = await _open(sim, app)
    assert opened.status_code == 200 and opened.json()["ticket"]
    with pytest.raises(InvalidStatus):
        await connect(ws_url(opened.json()), open_timeout=5)
    good = await open_connection(sim, app)
    async with connect(ws_url(good), open_timeout=5):
        await wait_for(lambda: connections(sim, app), lambda conns: len(conns) == 1)
