"""The real lark-oapi SDK against imsim: the contract that keeps imsim's Feishu true to the
client it imitates. `lark.ws.Client` blocks its thread in its own event loop, so the bot
(lark_bot.py) runs in its own process with imsim's URL as its domain."""

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from feishu_testkit import open_peer, send_message
from imsim_testkit import sim_json, stop_process, wait_for

pytestmark = pytest.mark.timeout(120)

LARK_BOT = Path(__file__).with_name("lark_bot.py")
# Importing lark_oapi takes seconds on a busy machine before the bot even connects.
CONNECT_WITHIN = 60


@pytest.fixture
def run_lark_bot(imsim_url: str, tmp_path: Path) -> Iterator[object]:
    processes: list[subprocess.Popen[bytes]] = []

    def start(app_id: str, app_secret: str) -> tuple[subprocess.Popen[bytes], Path]:
        log_path = tmp_path / f"lark-{app_id}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, str(LARK_BOT), imsim_url, app_id, app_secret],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        processes.append(process)
        return process, log_path

    yield start
    for process in processes:
        stop_process(process)


async def test_lark_sdk_receives_chunked_events_acks_them_and_streams_a_card(
    sim, make_feishu_app, run_lark_bot
):
    app = await make_feishu_app(chunk_size=200, ping_interval=1)
    app_id = app["app_id"]
    _process, log_path = run_lark_bot(app_id, app["app_secret"])
    try:
        await wait_for(
            lambda: sim_json(sim, f"/sim/feishu/apps/{app_id}/connections"),
            lambda conns: any(c["open"] for c in conns),
            within=CONNECT_WITHIN,
        )
        sent = await send_message(sim, app, text="card Hello, Feishu long connection", sender_id="sdk-user")
        view = await wait_for(
            lambda: sim_json(sim, f"/sim/feishu/apps/{app_id}/events/{sent['event_id']}"),
            lambda e: e["status"] == "acked" and e["answers"] and e["answers"][0]["state"] == "done",
            within=30,
        )
        [delivery] = view["deliveries"]
        assert delivery["frames"] > 1  # the SDK put the chunks back together
        [ack] = view["acks"]
        assert ack["code"] == 200 and ack["late"] is False and ack["biz_rt"] is not None
        [card] = view["answers"]
        assert card["content"] == "Hello, Feishu long connection" and card["summary"] == card["content"]
        assert card["reply_to"] == sent["message_id"] and card["link"] == "reply"
        assert [u["op"] for u in card["updates"]] == ["create", "content", "content", "settings"]

        log = log_path.read_text(errors="replace")
        assert f'"event_id": "{sent["event_id"]}"' in log and sent["message_id"] in log

        counters = await wait_for(
            lambda: sim_json(sim, f"/sim/feishu/apps/{app_id}/counters"),
            lambda c: c["pings"]["pongs"] >= 2,  # the SDK pings every PingInterval (1 s here)
            within=20,
        )
        calls = counters["api_calls"]
        assert set(calls["by_status"]) == {"200"}, calls
        for route in (
            "POST /callback/ws/endpoint",
            "POST /open-apis/auth/v3/tenant_access_token/internal",
            "POST /open-apis/cardkit/v1/cards",
            "POST /open-apis/im/v1/messages/{message_id}/reply",
            "PUT /open-apis/cardkit/v1/cards/{card_id}/elements/{element_id}/content",
            "PATCH /open-apis/cardkit/v1/cards/{card_id}/settings",
        ):
            assert calls["by_route"].get(route), route
        assert counters["acks"] == {"ok": 1, "late": 0, "failed": 0, "unknown": 0}
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- SDK log ---\n{log_path.read_text(errors='replace')}") from exc


async def test_lark_sdk_gives_up_when_the_app_has_too_many_connections(sim, make_feishu_app, run_lark_bot):
    app = await make_feishu_app(max_connections=1)
    holder = await open_peer(sim, app)
    try:
        process, log_path = run_lark_bot(app["app_id"], app["app_secret"])
        await wait_for(
            lambda: sim_json(sim, f"/sim/feishu/apps/{app['app_id']}/counters"),
            lambda c: c["connections"]["refused"].get("too_many_connections") == 1,
            within=CONNECT_WITHIN,
        )
        # A ClientException: the SDK does not retry, its start() raises.
        assert process.wait(timeout=30) != 0
        assert "exceed connection limit" in log_path.read_text(errors="replace")
    finally:
        await holder.websocket.close()
