"""The probe the bus services use: 0 when NATS and Redis answer, 1 (quickly) when not."""

import os
import subprocess
import sys
import time

from tests.support.openai_stub import free_port


def probe(**env: str) -> tuple[int, str, float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "imgate_common.healthcheck"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=20,
    )
    return result.returncode, result.stderr, time.monotonic() - started


def test_healthy_when_both_answer() -> None:
    code, err, _ = probe(NATS_URL="nats://127.0.0.1:4222", REDIS_URL="redis://127.0.0.1:6379/0")
    assert code == 0, err


def test_unhealthy_fast_and_names_what_failed_without_credentials() -> None:
    port = free_port()
    code, err, took = probe(
        NATS_URL="nats://127.0.0.1:4222", REDIS_URL=f"redis://user:hunter2@127.0.0.1:{port}/0"
    )
    assert code == 1
    assert "redis" in err and "nats" not in err.split("did not answer")[0].replace("redis", "")
    assert "hunter2" not in err
    assert took < 8
