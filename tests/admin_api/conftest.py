"""Fixtures: the admin app on SQLite and on PostgreSQL, with real Redis and NATS beside it."""

import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from cryptography.fernet import Fernet
from fastapi import FastAPI
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from sqlalchemy import text

from imgate_admin.deps import Resources
from imgate_admin.main import create_app
from imgate_admin.settings import AdminSettings
from imgate_common.bus import CONTROL_ALL
from imgate_common.db.models import Channel
from imgate_common.messages import ChannelState, ControlReply, ControlRequest
from imgate_common.secrets import SecretBox
from tests.support.databases import postgres_database
from tests.support.openai_stub import free_port

REDIS_URL = "redis://127.0.0.1:6379/0"
NATS_URL = "nats://127.0.0.1:4222"
ADMIN_TOKEN = "admin-token-" + uuid.uuid4().hex
CLIENT_SECRET = "dt-secret-" + uuid.uuid4().hex
API_KEY = "sk-test-" + uuid.uuid4().hex
# Holds the channel ids below a test's own; only on SQLite, which numbers from the largest row.
ID_FLOOR_NAME = "__id_floor__"
FLOOR_PLATFORM = "__floor__"


@pytest.fixture(scope="session")
def admin_pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this package in this test session, dropped at its end.

    Not the shared `pg_url`: these tests empty every table after each test.
    """
    with postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'admin.db'}"
    url: str = request.getfixturevalue("admin_pg_url")
    return url


async def _empty_tables(url: str) -> None:
    """Each PostgreSQL test starts from empty tables (and ids from 1); the schema stays."""
    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        rows = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
        )
        if rows:
            tables = ", ".join(f'"{r["tablename"]}"' for r in rows)
            await conn.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()


@pytest.fixture
def secret_key() -> str:
    return Fernet.generate_key().decode()


@pytest.fixture
async def settings(
    database_url: str,
    secret_key: str,
    key_prefix: str,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[AdminSettings]:
    # Through the environment, as in production, so the variable names are exercised too.
    env = {
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "ADMIN_CONTROL_TIMEOUT_S": "0.5",
        "DATABASE_URL": database_url,
        "REDIS_URL": REDIS_URL,
        "NATS_URL": NATS_URL,
        "IMGATE_REDIS_PREFIX": key_prefix,  # a namespace of its own per test
        "IMGATE_SECRET_KEYS": secret_key,
        "IMGATE_DATA_DIR": str(tmp_path / "data"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield AdminSettings()
    if database_url.startswith("postgresql"):
        await _empty_tables(database_url)


@pytest.fixture
def first_channel_id() -> int:
    # NATS is shared with whatever else runs on this machine (a live connector answers control
    # requests for the channels of its own database, other test runs publish theirs), and subjects
    # carry no installation prefix. Channels numbered from a random point far above anyone's 1, 2,
    # 3 keep this test's control traffic apart. Below 2**31: the column is a 32-bit integer.
    return random.randrange(10**8, 2 * 10**9)


async def _number_channels_from(resources: Resources, first_id: int) -> None:
    async with resources.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(
                text("SELECT setval(pg_get_serial_sequence('channels', 'id'), :n, false)"), {"n": first_id}
            )
            return
    async with resources.sessions() as session:
        # On a platform of its own, so that lists filtered by platform leave it out.
        session.add(Channel(id=first_id - 1, name=ID_FLOOR_NAME, platform=FLOOR_PLATFORM, enabled=False))
        await session.commit()


@pytest.fixture
async def app(settings: AdminSettings, first_channel_id: int) -> AsyncIterator[FastAPI]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await _number_channels_from(app.state.resources, first_channel_id)
        yield app


@pytest.fixture
def resources(app: FastAPI) -> Resources:
    res: Resources = app.state.resources
    return res


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://admin.test",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ) as c:
        yield c


@pytest.fixture
async def anon_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin.test") as c:
        yield c


@pytest.fixture
def box(secret_key: str) -> SecretBox:
    return SecretBox([secret_key])


def agent_body(name: str = "helper", **overrides: Any) -> dict[str, Any]:
    return {"name": name, "provider": "local", **overrides}


def channel_body(name: str = "sales-bot", **overrides: Any) -> dict[str, Any]:
    config = {
        "client_id": "ding-app-key",
        "client_secret": CLIENT_SECRET,
        "openapi_endpoint": "http://127.0.0.1:9999",
        "robot_code": "ding-app-key",
    }
    config.update(overrides.pop("config", {}))
    return {"name": name, "platform": "dingtalk", "config": config, **overrides}


def own(channels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The channels a test created through the API (without the SQLite id floor)."""
    return [c for c in channels if c["name"] != ID_FLOOR_NAME]


class ControlListener:
    """Stands in for a connector on the shared NATS: records and answers the control requests of
    this test's channels only, so other runs' requests are neither counted nor answered."""

    def __init__(self, first_id: int, reply: ControlReply | None = None, answer: bool = True) -> None:
        self.first_id = first_id
        self.answer = answer
        self.reply = reply
        self.requests: list[ControlRequest] = []

    async def handle(self, msg: Msg) -> None:
        request = ControlRequest.model_validate_json(msg.data)
        if not self.first_id <= request.channel_id < self.first_id + 1000:
            return
        self.requests.append(request)
        if self.answer:
            reply = self.reply or ControlReply(
                channel_id=request.channel_id, ok=True, state=ChannelState.CONNECTING, owner="test-connector"
            )
            await msg.respond(
                reply.model_copy(update={"channel_id": request.channel_id}).model_dump_json().encode()
            )

    def for_channel(self, channel_id: int) -> list[ControlRequest]:
        return [r for r in self.requests if r.channel_id == channel_id]

    async def listen(self, nc: NATS) -> None:
        await nc.subscribe(CONTROL_ALL, cb=self.handle)
        await nc.flush()  # the server knows the subscription before the app publishes


@pytest.fixture
async def control(nats_client: NATS, first_channel_id: int) -> ControlListener:
    """A stand-in connector that answers this test's control requests."""
    listener = ControlListener(first_channel_id)
    await listener.listen(nats_client)
    return listener


async def create_channel(
    client: httpx.AsyncClient, name: str = "sales-bot", **overrides: Any
) -> dict[str, Any]:
    response = await client.post("/api/v1/channels", json=channel_body(name, **overrides))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def create_agent(client: httpx.AsyncClient, name: str = "helper", **overrides: Any) -> dict[str, Any]:
    response = await client.post("/api/v1/agents", json=agent_body(name, **overrides))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


@asynccontextmanager
async def app_client(settings: AdminSettings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """Another app over the same database (say, after a restart with other keys)."""
    other = create_app(settings)
    async with other.router.lifespan_context(other):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=other),
            base_url="http://admin.test",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as c:
            yield other, c


@contextmanager
def served(settings: AdminSettings, outbound: httpx.AsyncBaseTransport | None = None) -> Iterator[str]:
    """The app under uvicorn on a free loopback port, in a thread with its own event loop."""
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, outbound), host="127.0.0.1", port=free_port(), log_config=None)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise TimeoutError("admin-api did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(10)
