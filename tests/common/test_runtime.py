"""A service's clients as its lifespan opens and closes them, and what it logs on the way."""

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from structlog.testing import capture_logs

from imgate_common import runtime
from imgate_common.consumers import ConsumerSpec
from imgate_common.runtime import close_nats, connect_nats, service_lifespan
from imgate_common.settings import CommonSettings
from tests.conftest import NATS_URL, REDIS_URL
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


def lifespan_settings(tmp_path: Path) -> CommonSettings:
    return CommonSettings(
        nats_url=NATS_URL,
        redis_url=REDIS_URL,
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path}/db.sqlite",
    )


async def test_the_lifespan_closes_every_client_and_what_the_service_added_in_reverse_order(
    tmp_path: Path,
) -> None:
    closed: list[str] = []
    async with service_lifespan(lifespan_settings(tmp_path), "test") as opened:
        assert await opened.redis.ping()
        async with opened.sessions() as session:
            await session.connection()
        opened.stack.callback(closed.append, "added by the service")
        opened.stack.callback(lambda: closed.append("still connected" if opened.nc.is_connected else "gone"))
    assert closed == ["still connected", "added by the service"]
    assert opened.nc.is_closed


async def test_a_lifespan_that_fails_at_start_closes_what_it_had_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    connected: list[NATS] = []

    async def connect(settings: CommonSettings, name: str) -> tuple[NATS, JetStreamContext]:
        nc, js = await connect_nats(settings, name)
        connected.append(nc)
        return nc, js

    monkeypatch.setattr(runtime, "connect_nats", connect)
    # A consumer of a stream nobody declared: the start fails after the bus connection opened.
    nowhere = ConsumerSpec("test-nowhere", "NO_SUCH_STREAM", "nowhere.>", 1.0, max_tries=1, backoff_s=(1.0,))
    with pytest.raises(NotFoundError):
        async with service_lifespan(lifespan_settings(tmp_path), "test", consumers=[nowhere]):
            pytest.fail("a lifespan that could not start must not run the service")
    [nc] = connected
    assert nc.is_closed
