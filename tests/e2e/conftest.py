"""The product as processes for end-to-end tests: the four services, imsim as DingTalk and Feishu, a
private nats-server, and a scripted OpenAI-compatible model server (a `tools.fleet.Fleet` with
the model in this process, so tests can script its answers and read what it was asked)."""

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.openai_stub import ScriptedModel
from tools.devstack import LocalStack, wait_until
from tools.fleet import Fleet, FleetConfig

CLIENT_ID, CLIENT_SECRET = "e2e-client", "e2e-secret"
LOCAL_CLIENT_ID, LOCAL_CLIENT_SECRET = "e2e-local", "e2e-local-secret"
FEISHU_APP_ID, FEISHU_APP_SECRET = "cli_e2e", "e2e-feishu-secret"


@dataclass
class Running:
    fleet: Fleet
    model: ScriptedModel

    @property
    def stack(self) -> LocalStack:
        return self.fleet.stack

    @property
    def imsim(self) -> str:
        return self.fleet.imsim

    @property
    def admin(self) -> str:
        return self.fleet.admin

    @property
    def model_url(self) -> str:
        return self.fleet.model

    @property
    def log_dir(self) -> Path:
        return self.fleet.log_dir

    def admin_api(self) -> httpx.Client:
        return self.fleet.admin_api()

    def logs(self) -> str:
        return self.fleet.logs(tail=4000)

    def crash_and_restart(self, service: str) -> None:
        """SIGKILL the service's (only) replica and start a new one without waiting for it."""
        [replica] = self.fleet.replicas(service)
        self.fleet.kill(replica)
        self.fleet.start_replica(service, wait=False)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    model = ScriptedModel(word_delay_s=0.03)
    # No channels yet: the `channel` fixture creates one through the admin API, as a user would.
    with Fleet(FleetConfig(channels=0), tmp_path_factory.mktemp("e2e"), model=model) as fleet:
        for client_id, secret in ((CLIENT_ID, CLIENT_SECRET), (LOCAL_CLIENT_ID, LOCAL_CLIENT_SECRET)):
            fleet.sim("POST", "/apps", {"client_id": client_id, "client_secret": secret})
        yield Running(fleet, model)


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


def add_channel(running: Running, name: str, platform: str, config: dict[str, Any]) -> dict[str, Any]:
    """A channel on `platform` answered by the scripted model, created through the admin API as a
    user would; returned once connected (an enabled channel must connect within 2 s)."""
    with running.admin_api() as api:
        agent = api.post(
            "/api/v1/agents",
            json={
                "name": f"scripted-{name}",
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
                "name": name,
                "platform": platform,
                "config": config,
                "default_agent_id": agent.json()["id"],
                "enabled": True,
            },
        )
        assert response.status_code == 201, response.text
        created = dict(response.json())

        def connected() -> bool:
            status = api.get(f"/api/v1/channels/{created['id']}/status").json()
            return bool(status["state"] == "connected")

        wait_until(connected, 5, f"{platform} channel connection")
        assert time.monotonic() - created_at < 2.5, "an enabled channel must connect within 2 s"
    return created


@pytest.fixture(scope="module")
def channel(running: Running) -> dict[str, Any]:
    created = add_channel(
        running, "e2e", "dingtalk", {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    )
    assert created["config"]["client_secret"] == "***"
    return created


@dataclass
class FeishuApp:
    """imsim's Feishu app behind a Feishu channel, played from the user's side."""

    running: Running
    app_id: str

    def url(self, what: str = "") -> str:
        app = f"{self.running.imsim}/sim/feishu/apps/{self.app_id}"
        return f"{app}/{what}" if what else app

    def get(self, what: str) -> Any:
        response = httpx.get(self.url(what), timeout=5)
        response.raise_for_status()
        return response.json()

    def post(self, what: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        response = httpx.post(self.url(what), json=body or {}, timeout=5)
        response.raise_for_status()
        return dict(response.json())

    def send(self, text: str, sender_id: str, **body: Any) -> dict[str, Any]:
        """The user's message → `{event_id, message_id, chat_id, …}`."""
        return self.post("messages", {"text": text, "sender_id": sender_id, **body})

    def faults(self, **config: Any) -> None:
        httpx.patch(self.url("faults/config"), json=config, timeout=5).raise_for_status()

    def answers(self, chat_id: str) -> list[dict[str, Any]]:
        return [i for i in self.get(f"chats/{chat_id}")["items"] if i["kind"] != "user"]

    def wait_for_answers(self, chat_id: str, count: int, timeout: float = 60) -> list[dict[str, Any]]:
        """Wait until the chat holds `count` bot answers with every card out of streaming mode."""
        deadline = time.monotonic() + timeout
        answers: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            answers = self.answers(chat_id)
            if len(answers) >= count and all(a["kind"] != "card" or a["state"] == "done" for a in answers):
                return answers
            time.sleep(0.1)
        raise AssertionError(f"expected {count} final answers, have {answers}\n{self.running.logs()}")


@pytest.fixture(scope="module")
def feishu(running: Running) -> FeishuApp:
    """A Feishu channel on imsim's Feishu app (`domain` = imsim's URL)."""
    app = FeishuApp(running, FEISHU_APP_ID)
    running.fleet.sim(
        "POST", "/feishu/apps", {"app_id": app.app_id, "app_secret": FEISHU_APP_SECRET, "name": "imgate"}
    )
    config = {"app_id": app.app_id, "app_secret": FEISHU_APP_SECRET, "domain": running.imsim}
    created = add_channel(running, "e2e-feishu", "feishu", config)
    assert created["config"]["app_secret"] == "***"
    return app
