"""The whole product as processes (admin-api, connector, router, agent-runner) against imsim and a
private nats-server, for the browser test and the secret-leak scenario."""

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.openai_stub import ScriptedModel, free_port, serve_scripted_model
from tools.devstack import LocalStack, http_ok, wait_until

ADMIN_TOKEN = "live-admin-token-" + uuid.uuid4().hex
SERVICES = ("admin-api", "connector", "router", "agent-runner")


@dataclass
class LiveStack:
    stack: LocalStack
    admin: str
    imsim: str
    model: ScriptedModel
    model_url: str
    log_dir: Path

    def api(self, token: str = ADMIN_TOKEN, **kwargs: Any) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.admin}/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=15,
            **kwargs,
        )

    def sim_app(self, client_id: str, client_secret: str) -> None:
        response = httpx.post(
            f"{self.imsim}/sim/apps", json={"client_id": client_id, "client_secret": client_secret}, timeout=5
        )
        response.raise_for_status()

    def connections(self, client_id: str) -> int:
        app = httpx.get(f"{self.imsim}/sim/apps/{client_id}", timeout=5).json()
        return int(app["connections"])

    def service_logs(self) -> dict[str, str]:
        """What our services wrote (logs and, with the console exporter, trace spans)."""
        return {name: (self.log_dir / f"{name}.log").read_text(errors="replace") for name in SERVICES}

    def tail(self) -> str:
        return "\n".join(f"--- {n}\n{text[-3000:]}" for n, text in self.service_logs().items())

    def wait(self, check: Callable[[], bool], timeout: float, what: str) -> float:
        """Wait for `check`; returns the seconds it took (fails with the services' logs)."""
        started = time.monotonic()
        try:
            wait_until(check, timeout, what)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.tail()}") from None
        return time.monotonic() - started


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    data = tmp_path_factory.mktemp("live")
    log_dir = data / "logs"
    stack = LocalStack(data, log_dir=log_dir)
    imsim_port, admin_port = free_port(), free_port()
    stack.env = {
        "IMGATE_DATA_DIR": str(data),
        "DATABASE_URL": f"sqlite+aiosqlite:///{data}/live.db",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "IMGATE_REDIS_PREFIX": f"live-{uuid.uuid4().hex[:8]}",
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "ADMIN_PORT": str(admin_port),
        "DINGTALK_OPENAPI_ENDPOINT": f"http://127.0.0.1:{imsim_port}",
        # The default reconcile period, so that a change visible within 2 s came by control message.
        "CONNECTOR_RECONCILE_INTERVAL_S": "10",
        "IMGATE_LOG_LEVEL": "DEBUG",  # the leak test reads everything the services can say
        "IMGATE_LOG_FORMAT": "json",
        "OTEL_TRACES_EXPORTER": "console",  # spans printed beside the logs, grepped with them
        "PYTHONUNBUFFERED": "1",
    }
    model = ScriptedModel(word_delay_s=0.01)
    with serve_scripted_model(model) as model_url:
        try:
            stack.env["NATS_URL"] = stack.start_nats(f"nats://127.0.0.1:{free_port()}")
            subprocess.run(
                [sys.executable, "-m", "imgate_common.db.migrate"],
                env={**os.environ, **stack.env},
                check=True,
                capture_output=True,
            )
            imsim = stack.start_imsim(imsim_port, [])
            for name in SERVICES:
                stack.start_service(name)
            admin = f"http://127.0.0.1:{admin_port}"
            wait_until(lambda: http_ok(f"{admin}/healthz"), 60, "admin-api")
            yield LiveStack(stack, admin, imsim, model, model_url, log_dir)
        finally:
            stack.stop()
