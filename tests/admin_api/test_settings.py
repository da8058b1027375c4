"""Settings names, and the refusal to start without a token."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet

from imgate_admin.errors import StartupError
from imgate_admin.main import create_app
from imgate_admin.settings import AdminSettings

from .conftest import NATS_URL, REDIS_URL


def test_admin_fields_read_admin_variables_and_shared_ones_keep_theirs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ADMIN_TOKEN", "t0k")
    monkeypatch.setenv("ADMIN_HOST", "0.0.0.0")
    monkeypatch.setenv("ADMIN_PORT", "9001")
    monkeypatch.setenv("ADMIN_CONTROL_TIMEOUT_S", "0.25")
    monkeypatch.setenv("IMGATE_REDIS_PREFIX", "elsewhere")
    monkeypatch.setenv("DATABASE_URL", "sqlite:///x.db")
    settings = AdminSettings()
    assert settings.token.get_secret_value() == "t0k"
    assert (settings.host, settings.port, settings.control_timeout_s) == ("0.0.0.0", 9001, 0.25)
    assert (settings.redis_prefix, settings.database_url) == ("elsewhere", "sqlite:///x.db")
    assert "t0k" not in repr(settings)


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ADMIN_TOKEN", "ADMIN_HOST", "ADMIN_PORT", "ADMIN_CONTROL_TIMEOUT_S"):
        monkeypatch.delenv(name, raising=False)
    settings = AdminSettings()
    assert (settings.host, settings.port, settings.control_timeout_s) == ("127.0.0.1", 8780, 2.0)
    assert settings.missing_token()


@pytest.mark.parametrize("token", ["", "   "])
def test_create_app_refuses_an_empty_token(token: str) -> None:
    with pytest.raises(StartupError, match="ADMIN_TOKEN"):
        create_app(AdminSettings(token=token))


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADMIN_", "IMGATE_"))}
    env.update(
        DATABASE_URL=f"sqlite:///{tmp_path / 'admin.db'}",
        REDIS_URL=REDIS_URL,
        NATS_URL=NATS_URL,
        IMGATE_SECRET_KEYS=Fernet.generate_key().decode(),
        IMGATE_DATA_DIR=str(tmp_path / "data"),
        **extra,
    )
    return env


def test_the_module_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "imgate_admin"],
        env=_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "ADMIN_TOKEN" in lines[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_the_module_serves_on_the_configured_port(tmp_path: Path) -> None:
    port = _free_port()
    env = _env(
        tmp_path, ADMIN_TOKEN="module-token", ADMIN_PORT=str(port), IMGATE_REDIS_PREFIX="imgate-test-module"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgate_admin"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        health = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert health is not None, proc.stdout.read() if proc.stdout else ""
        assert health.json() == {"ok": True}
        authed = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/channels",
            headers={"Authorization": "Bearer module-token"},
            timeout=5,
        )
        assert authed.status_code == 200
        assert (tmp_path / "admin.db").exists()  # migrated at start
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=30)
    # Uvicorn drains, runs the lifespan's shutdown, then re-raises SIGTERM for the parent to see.
    assert proc.returncode in (0, -signal.SIGTERM), output
    assert "admin_api_stopping" in output
    assert "module-token" not in output
