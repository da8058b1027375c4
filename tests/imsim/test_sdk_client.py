"""The real `dingtalk-stream` SDK client against imsim: the contract that keeps imsim true to the
client it imitates. The SDK reads DINGTALK_OPENAPI_ENDPOINT at import time, so the bot
(sdk_bot.py) runs in its own process with the variable pointing at imsim."""

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from imsim_testkit import (
    BOT_TOPIC,
    message_path,
    patch_faults,
    send_user_message,
    sim_json,
    stop_process,
    wait_for,
)

pytestmark = pytest.mark.timeout(90)

SDK_BOT = Path(__file__).with_name("sdk_bot.py")


@pytest.fixture
def run_sdk_bot(imsim_url: str, tmp_path: Path) -> Iterator[object]:
    processes: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(client_id: str, client_secret: str) -> Path:
        log_path = tmp_path / f"sdk-{client_id}.log"
        env = {**os.environ, "DINGTALK_OPENAPI_ENDPOINT": imsim_url}
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, str(SDK_BOT), client_id, client_secret],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        processes.append((process, log_path))
        return log_path

    yield start
    for process, _log in processes:
        stop_process(process)


async def test_real_sdk_client_connects_acks_and_replies(sim, make_app, run_sdk_bot):
    app = await make_app(ping_interval=0.5, disconnect_grace=5)
    client_id = app["client_id"]
    log_path = run_sdk_bot(client_id, app["client_secret"])

    def sdk_log() -> str:
        return log_path.read_text(errors="replace")

    try:
        connections = await wait_for(
            lambda: sim_json(sim, f"/sim/apps/{client_id}/connections"),
            lambda conns: any(c["open"] for c in conns),
            within=20,
        )
        assert "dingtalk-sdk-python" in connections[0]["ua"]
        assert {"type": "CALLBACK", "topic": BOT_TOPIC} in connections[0]["subscriptions"]

        sent = await send_user_message(sim, app, text="hi", sender_staff_id="sdk-user")
        acks = await wait_for(
            lambda: sim_json(sim, f"/sim/apps/{client_id}/acks"),
            lambda acks: any(a["msg_id"] == sent["msg_id"] for a in acks),
            within=20,
        )
        ack = next(a for a in acks if a["msg_id"] == sent["msg_id"])
        assert ack["kind"] == "callback"
        assert ack["code"] == 200
        assert ack["frame_id"] == sent["frame_id"]

        # The SDK echoes ping opaques the way imsim checks them.
        pings = await wait_for(
            lambda: sim_json(sim, f"/sim/apps/{client_id}/pings"),
            lambda pings: any(p["acked"] for p in pings),
            within=10,
        )
        assert all(p["echoed"] for p in pings if p["acked"])

        # Its webhook reply and AI card (create, deliver, stream, finish) are in the timeline.
        conversation = await sim_json(sim, f"/sim/apps/{client_id}/conversations/{sent['conversation_id']}")
        kinds = [item["kind"] for item in conversation["items"]]
        assert kinds == ["user", "text", "card"]
        assert conversation["items"][1]["text"] == "echo: hi"
        card = conversation["items"][2]
        assert card["content"] == "Hello, world"
        assert card["flow_status"] == "3"
        assert [u["len"] for u in card["updates"] if u["op"] == "full"] == [5, 12]

        # SYSTEM disconnect: the SDK closes the socket and opens a new connection.
        old_id = connections[0]["connection_id"]
        await sim.post(f"/sim/apps/{client_id}/disconnect", json={"connection_id": old_id})
        after = await wait_for(
            lambda: sim_json(sim, f"/sim/apps/{client_id}/connections"),
            lambda conns: (
                any(c["open"] and c["connection_id"] != old_id for c in conns)
                and not next(c for c in conns if c["connection_id"] == old_id)["open"]
            ),
            within=20,
        )
        old = next(c for c in after if c["connection_id"] == old_id)
        assert old["close_reason"] == "client_closed_after_disconnect"
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- SDK log ---\n{sdk_log()}") from exc


async def _wait_connected(sim, client_id, within=20):
    return await wait_for(
        lambda: sim_json(sim, f"/sim/apps/{client_id}/connections"),
        lambda conns: any(c["open"] for c in conns),
        within=within,
    )


async def _answers(sim, app, sent, *, count=1, within=20):
    message = await wait_for(
        lambda: sim_json(sim, message_path(app, sent["msg_id"])),
        lambda m: (
            len(m["answers"]) >= count
            and all(a["kind"] != "card" or a["flow_status"] in ("3", "5") for a in m["answers"])
        ),
        within=within,
    )
    return message["answers"]


async def test_real_sdk_card_replier_calls(sim, make_app, run_sdk_bot):
    app = await make_app()
    client_id = app["client_id"]
    log_path = run_sdk_bot(client_id, app["client_secret"])
    try:
        await _wait_connected(sim, client_id)

        sync = await send_user_message(sim, app, text="sync Hello, sync", sender_staff_id="s1")
        [card] = await _answers(sim, app, sync)
        assert card["content"] == "Hello, sync" and card["flow_status"] == "3"
        assert card["finalized"] is True and card["error"] is False
        assert [u["op"] for u in card["updates"]] == ["create", "deliver", "append", "full", "update"]
        assert [u["len"] for u in card["updates"] if u["op"] in ("append", "full")] == [3, 11]
        assert card["spaces"][0]["space_type"] == "IM_ROBOT" and card["spaces"][0]["space_id"] == "s1"

        via_async = await send_user_message(sim, app, text="async Async done", sender_staff_id="s2")
        [card] = await _answers(sim, app, via_async)
        assert card["content"] == "Async done" and card["flow_status"] == "3"
        assert [u["op"] for u in card["updates"]] == ["create", "deliver", "append", "full", "update"]

        failed = await send_user_message(sim, app, text="fail Broke", sender_staff_id="s3")
        [card] = await _answers(sim, app, failed)
        assert card["content"] == "Broke" and card["flow_status"] == "5"
        assert card["error"] is True and card["streams"] == {"msgContent": "failed"}

        group = await send_user_message(
            sim, app, text="deliver Delivered", conversation_type="2", conversation_title="SDK group"
        )
        [card] = await _answers(sim, app, group)
        assert card["spaces"][0]["space_type"] == "IM_GROUP"
        assert card["spaces"][0]["conversation_id"] == group["conversation_id"]
        assert card["params"]["msgTitle"] == "Title"  # kept: the SDK updated by key
        assert card["content"] == "Delivered" and card["flow_status"] == "3"
        assert [u["op"] for u in card["updates"]] == ["create", "deliver", "update"]

        calls = (await sim_json(sim, f"/sim/apps/{client_id}/counters"))["api_calls"]
        assert set(calls["by_status"]) == {"200"}, calls
        for route in (
            "POST /v1.0/card/instances",
            "POST /v1.0/card/instances/deliver",
            "POST /v1.0/card/instances/createAndDeliver",
            "PUT /v1.0/card/instances",
            "PUT /v1.0/card/streaming",
        ):
            assert calls["by_route"].get(route), route

        # Card APIs down: the SDK logs imsim's error body and goes on ACKing.
        await patch_faults(sim, app, card_down=True)
        down = await send_user_message(sim, app, text="sync Never shown", sender_staff_id="s4")
        await wait_for(
            lambda: sim_json(sim, f"/sim/apps/{client_id}/counters"),
            lambda c: c["api_calls"]["by_outcome"].get("card_down", 0) >= 4,
            within=20,
        )
        acks = await sim_json(sim, f"/sim/apps/{client_id}/acks")
        assert [a["code"] for a in acks if a["msg_id"] == down["msg_id"]] == [200]
        assert (await sim_json(sim, message_path(app, down["msg_id"])))["answers"] == []
        await wait_for(lambda: _read(log_path), lambda text: "ServiceUnavailable" in text, within=10)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- SDK log ---\n{log_path.read_text(errors='replace')}") from exc


async def _read(path: Path) -> str:
    return await asyncio.to_thread(path.read_text, errors="replace")


async def test_real_sdk_client_backs_off_after_open_failures(sim, make_app, run_sdk_bot):
    app = await make_app()
    client_id = app["client_id"]
    await patch_faults(sim, app, open_failure="server_error", open_failure_status=500, open_failure_count=1)
    log_path = run_sdk_bot(client_id, app["client_secret"])
    try:
        # The SDK waits 10 s after a failed open before it tries again.
        await _wait_connected(sim, client_id, within=30)
        counters = await sim_json(sim, f"/sim/apps/{client_id}/counters")
        assert counters["connections"]["opens_refused"] == {"server_error": 1}
        assert counters["api_calls"]["by_route"]["POST /v1.0/gateway/connections/open"] == 2
        assert "open connection failed" in log_path.read_text(errors="replace")
        sent = await send_user_message(sim, app, text="hi after back-off")
        await wait_for(
            lambda: sim_json(sim, f"/sim/apps/{client_id}/acks"),
            lambda acks: any(a["msg_id"] == sent["msg_id"] and a["code"] == 200 for a in acks),
            within=20,
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- SDK log ---\n{log_path.read_text(errors='replace')}") from exc
