"""A service's bus connection as it opens and closes it: what it logs on the way."""

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from imgate_common.runtime import close_nats, connect_nats
from imgate_common.settings import CommonSettings
from tests.conftest import NATS_URL
from tests.support.openai_stub import free_port
from tools.devstack import nats_server_binary


@pytest.fixture
def doomed_nats_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A nats-server of this test's own, for the test to kill."""
    port = free_port()
    argv = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(tmp_path)]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield f"nats://127.0.0.1:{port}", server
    server.kill()
    server.wait()


async def test_closing_the_bus_connection_on_purpose_logs_no_disconnection() -> None:
    nc, _ = await connect_nats(CommonSettings(nats_url=NATS_URL), "test")
    with capture_logs() as logs:
        await nc.close()
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == []


async def test_a_stop_after_the_bus_went_away_closes_without_an_error(
    doomed_nats_server: tuple[str, subprocess.Popen[bytes]],
) -> None:
    url, server = doomed_nats_server
    for _ in range(100):  # the server needs a moment to listen
        try:
            nc, _ = await connect_nats(CommonSettings(nats_url=url), "test")
            break
        except Exception:
            await asyncio.sleep(0.1)
    else:
        pytest.fail("the test's nats-server did not come up")
    with capture_logs() as logs:
        server.kill()
        for _ in range(200):  # until the client noticed: a drain can no longer work then
            if nc.is_reconnecting:
                break
            await asyncio.sleep(0.05)
        await close_nats(nc)
    assert nc.is_closed
    assert "nats_disconnected" in [e["event"] for e in logs]  # not our doing: worth a warning
