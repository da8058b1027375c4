"""imsim started for real (`python -m imsim` on a free port, once per session); each test
makes its own app so tests never share state."""

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from feishu_testkit import FeishuPeer, open_peer
from imsim_testkit import (
    ENV_APP,
    PRESET_APP,
    PRESET_FEISHU_APP,
    StreamPeer,
    open_connection,
    sim_json,
    stop_process,
    wait_for,
    ws_url,
)
from websockets.asyncio.client import connect

STARTUP_TIMEOUT = 20.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def imsim_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("imsim") / "imsim.log"


@pytest.fixture(scope="session")
def imsim_url(imsim_log: Path) -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, "IMSIM_APPS": ":".join(ENV_APP)}
    with imsim_log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "imsim",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--app",
                ":".join(PRESET_APP),
                "--app",
                ":".join(("feishu", *PRESET_FEISHU_APP)),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"imsim exited with {process.returncode}:\n{imsim_log.read_text()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1.0).json() == {"ok": True}:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"imsim did not start:\n{imsim_log.read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        stop_process(process)


@pytest.fixture
async def sim(imsim_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=imsim_url, timeout=10.0) as client:
        yield client


@pytest.fixture
def make_app(sim: httpx.AsyncClient) -> Callable[..., Awaitable[dict[str, Any]]]:
    """Create a fresh app per test, so tests never see each other's state."""

    async def create(**tunables: Any) -> dict[str, Any]:
        client_id = f"app-{uuid.uuid4().hex[:10]}"
        secret = f"secret-{uuid.uuid4().hex[:10]}"
        response = await sim.post(
            "/sim/apps", json={"client_id": client_id, "client_secret": secret, **tunables}
        )
        response.raise_for_status()
        return {**response.json(), "client_secret": secret}

    return create


@pytest.fixture
async def stream_peer(
    sim: httpx.AsyncClient,
) -> AsyncIterator[Callable[..., Awaitable[StreamPeer]]]:
    """Factory: open a Stream connection for an app and wait until imsim lists it."""
    peers: list[StreamPeer] = []

    async def open_peer(app: dict[str, Any], subscriptions: list[dict[str, str]] | None = None) -> StreamPeer:
        before = len(await sim_json(sim, f"/sim/apps/{app['client_id']}/connections"))
        opened = await open_connection(sim, app, subscriptions)
        peer = StreamPeer(await connect(ws_url(opened), open_timeout=5))
        peers.append(peer)
        await wait_for(
            lambda: sim_json(sim, f"/sim/apps/{app['client_id']}/connections"),
            lambda conns: len(conns) > before,
        )
        return peer

    yield open_peer
    for peer in peers:
        await peer.websocket.close()


@pytest.fixture
def make_feishu_app(sim: httpx.AsyncClient) -> Callable[..., Awaitable[dict[str, Any]]]:
    """Create a fresh Feishu app per test."""

    async def create(**tunables: Any) -> dict[str, Any]:
        app_id = f"cli_{uuid.uuid4().hex[:12]}"
        secret = f"secret-{uuid.uuid4().hex[:10]}"
        response = await sim.post(
            "/sim/feishu/apps", json={"app_id": app_id, "app_secret": secret, **tunables}
        )
        response.raise_for_status()
        return {**response.json(), "app_secret": secret}

    return create


@pytest.fixture
async def feishu_peer(sim: httpx.AsyncClient) -> AsyncIterator[Callable[..., Awaitable[FeishuPeer]]]:
    """Factory: open a long connection for an app and wait until imsim lists it."""
    peers: list[FeishuPeer] = []

    async def open_one(app: dict[str, Any]) -> FeishuPeer:
        peer = await open_peer(sim, app)
        peers.append(peer)
        await wait_for(
            lambda: sim_json(sim, f"/sim/feishu/apps/{app['app_id']}/connections"),
            lambda conns: any(c["connection_id"] == peer.device_id and c["open"] for c in conns),
        )
        return peer

    yield open_one
    for peer in peers:
        await peer.websocket.close()
