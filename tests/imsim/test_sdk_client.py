"""The real `dingtalk-stream` SDK client against imsim. The SDK reads DINGTALK_OPENAPI_ENDPOINT
at import time, so it runs in its own process with the variable pointing at imsim."""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from imsim_testkit import BOT_TOPIC, send_user_message, sim_json, wait_for

pytestmark = pytest.mark.timeout(90)

# An SDK bot: ACKs every message, answers through the sessionWebhook, and streams an AI card.
SDK_BOT = """
import sys

import dingtalk_stream
from dingtalk_stream import AckMessage, ChatbotHandler, ChatbotMessage


class EchoHandler(ChatbotHandler):
    async def process(self, callback):
        message = ChatbotMessage.from_dict(callback.data)
        self.reply_text("echo: " + message.text.content, message)
        card = self.ai_markdown_card_start(message)
        card.ai_streaming("Hello", append=True)
        card.ai_streaming(", world", append=True)
        card.ai_finish()
        return AckMessage.STATUS_OK, "OK"


credential = dingtalk_stream.Credential(sys.argv[1], sys.argv[2])
client = dingtalk_stream.DingTalkStreamClient(credential)
client.register_callback_handler(ChatbotMessage.TOPIC, EchoHandler())
client.start_forever()
"""


@pytest.fixture
def run_sdk_bot(imsim_url: str, tmp_path: Path) -> Iterator[object]:
    processes: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(client_id: str, client_secret: str) -> Path:
        log_path = tmp_path / f"sdk-{client_id}.log"
        env = {**os.environ, "DINGTALK_OPENAPI_ENDPOINT": imsim_url}
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-c", SDK_BOT, client_id, client_secret],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        processes.append((process, log_path))
        return log_path

    yield start
    for process, _log in processes:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


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
