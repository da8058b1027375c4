"""`make run` as a person runs it: in a terminal, chatted with, then stopped with Ctrl-C.

The README's command under a pseudo-terminal, on a data directory, ports and a nats-server of
its own. The demo channels are pointed at a scripted model so that a burst of 100 messages from
20 new users (10 a second) on DingTalk is answered in seconds, and so is a message on Feishu; its
log must show no span used after it ended and no `database is locked` from the embedded SQLite.
Ctrl-C (pressed twice) must stop every process and leave `make run` with exit status 0, no
traceback, no make error.
"""

import os
import pty
import re
import select
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.openai_stub import ScriptedModel, serve_scripted_model
from tools.devstack import DEMO_CLIENT_ID, DEMO_FEISHU_APP_ID, ROOT, free_port, wait_until

pytestmark = pytest.mark.e2e

USERS = 20
MESSAGES = 100
RATE_PER_S = 10.0


class Terminal:
    """A command in a pseudo-terminal; what it prints is collected in the background."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.pid, self._fd = pty.fork()
        if self.pid == 0:  # the child: the command
            os.chdir(ROOT)
            os.execvpe(argv[0], argv, env)
        self._output = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            ready, _, _ = select.select([self._fd], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(self._fd, 65536)
            except OSError:  # the command and all its children closed the terminal
                return
            if not chunk:
                return
            with self._lock:
                self._output += chunk

    @property
    def output(self) -> str:
        with self._lock:
            return self._output.decode(errors="replace")

    def press_ctrl_c(self) -> None:
        os.write(self._fd, b"\x03")

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._reader.join(5)
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.1)
        os.killpg(self.pid, 9)
        raise AssertionError(f"still running after {timeout:.0f}s:\n{self.output[-3000:]}")


def answered(imsim: str, conversation_id: str) -> list[dict[str, object]]:
    response = httpx.get(f"{imsim}/sim/apps/{DEMO_CLIENT_ID}/conversations/{conversation_id}", timeout=5)
    if response.status_code == 404:
        return []
    items = response.json()["items"]
    return [
        i
        for i in items
        # A plain or markdown message (an answer without a card: the app's card budget was
        # spent), or a finished card.
        if i["kind"] in ("text", "markdown")
        or (i["kind"] == "card" and i["finalized"] and i["flow_status"] == "3")
    ]


def test_make_run_answers_a_burst_of_new_users_quietly_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    admin_port, imsim_port = free_port(), free_port()
    env = {
        **os.environ,
        "IMGATE_DATA_DIR": str(tmp_path / "data"),
        "ADMIN_PORT": str(admin_port),
        "IMSIM_PORT": str(imsim_port),
        # A nats-server of its own (make run starts one when nothing answers there) and a Redis
        # namespace of its own: nothing left by other tests reaches this run.
        "NATS_URL": f"nats://127.0.0.1:{free_port()}",
        "IMGATE_REDIS_PREFIX": f"imgate-make-run-{admin_port}",
        "CONNECTOR_METRICS_PORT": "-1",
        "ROUTER_METRICS_PORT": "-1",
        "RUNNER_METRICS_PORT": "-1",
        "TERM": "dumb",
    }
    env.pop("DATABASE_URL", None)  # the embedded SQLite
    admin, imsim = f"http://127.0.0.1:{admin_port}", f"http://127.0.0.1:{imsim_port}"
    model = ScriptedModel(word_delay_s=0.005)
    with serve_scripted_model(model) as model_url:
        run = Terminal(["make", "--no-print-directory", "run"], env)
        try:
            wait_until(lambda: "imgate is running" in run.output, 240, "make run")
            token = re.search(r"bearer token: (\S+)\)", run.output)
            assert token, run.output[-2000:]
            headers = {"Authorization": f"Bearer {token.group(1)}"}
            with httpx.Client(base_url=f"{admin}/api/v1", headers=headers, timeout=10) as api:
                agent = api.post(
                    "/agents",
                    json={"name": "scripted", "provider": "openai", "model": "m", "base_url": model_url},
                )
                assert agent.status_code == 201, agent.text
                demos = api.get("/channels").json()
                assert sorted((c["name"], c["platform"]) for c in demos) == [
                    ("demo", "dingtalk"),
                    ("demo-feishu", "feishu"),
                ]
                for demo in demos:
                    changed = api.patch(
                        f"/channels/{demo['id']}", json={"default_agent_id": agent.json()["id"]}
                    )
                    assert changed.status_code == 200, changed.text

            conversations: set[str] = set()
            started = time.monotonic()
            for n in range(MESSAGES):
                time.sleep(max(0.0, started + n / RATE_PER_S - time.monotonic()))  # the pace
                user = n % USERS
                sent = httpx.post(
                    f"{imsim}/sim/apps/{DEMO_CLIENT_ID}/messages",
                    json={"text": f"question {n} from user {user}", "sender_staff_id": f"burst-user-{user}"},
                    timeout=5,
                )
                sent.raise_for_status()
                conversations.add(sent.json()["conversation_id"])
            assert len(conversations) == USERS
            wait_until(
                lambda: sum(len(answered(imsim, c)) for c in conversations) >= MESSAGES,
                120,
                "every answer",
            )
            assert sum(len(answered(imsim, c)) for c in conversations) == MESSAGES
            feishu = f"{imsim}/sim/feishu/apps/{DEMO_FEISHU_APP_ID}"
            asked = httpx.post(f"{feishu}/messages", json={"text": "hello from Feishu"}, timeout=5).json()

            def card_done() -> bool:
                items = httpx.get(f"{feishu}/chats/{asked['chat_id']}", timeout=5).json()["items"]
                return any(i["kind"] == "card" and i["state"] == "done" for i in items)

            wait_until(card_done, 30, "the Feishu demo's answer")
        finally:
            run.press_ctrl_c()
            time.sleep(0.5)
            run.press_ctrl_c()  # an impatient second press changes nothing
            status = run.wait(60)

    log = run.output
    (tmp_path / "make-run.log").write_text(log)  # kept for a failure's reader
    assert status == 0, log[-3000:]
    # FastStream's per-message and lifecycle lines ("waiting for messages", "callback for
    # Task-N is being executed...") are noise beside the services' own log.
    noise = ("waiting for messages", "is being executed", "nats_disconnected")
    for unwanted in ("ended span", "database is locked", "Traceback", "make: ***", *noise):
        assert unwanted not in log, f"{unwanted!r} in the log of make run: {tmp_path / 'make-run.log'}"
    stopped = re.search(r"^stopped (.+)$", log, re.MULTILINE)
    assert stopped, log[-2000:]
    assert set(stopped.group(1).strip().split(", ")) >= {
        "admin-api",
        "connector",
        "router",
        "agent-runner",
        "imsim",
        "nats",
    }
