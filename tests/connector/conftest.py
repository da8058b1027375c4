"""imsim and a private nats-server as real processes for the connector's integration tests."""

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import nats
import pytest
from cryptography.fernet import Fernet
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.bus import provision_streams
from imgate_common.channels import ChannelSpec
from imgate_common.db.engine import create_engine, session_factory
from imgate_common.db.migrate import upgrade
from imgate_common.messages import InboundMessage
from imgate_common.secrets import SecretBox
from imgate_connector.health import ChannelHealth
from imgate_connector.media import MediaStore
from imgate_connector.platforms.base import PlatformAdapter
from imgate_connector.platforms.dingtalk.adapter import DingTalkAdapter
from imgate_connector.resources import ConnectorResources
from imgate_connector.settings import ConnectorSettings
from tests.connector.sim import Sim
from tests.support.openai_stub import free_port
from tools.devstack import LocalStack


@pytest.fixture(scope="session")
def imsim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("imsim")
    stack = LocalStack(Path(data), log_dir=Path(data))
    try:
        yield stack.start_imsim(free_port(), [])
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def private_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A nats-server of these tests' own: nothing else consumes from its streams."""
    data = tmp_path_factory.mktemp("nats")
    stack = LocalStack(Path(data), log_dir=Path(data))
    try:
        yield stack.start_nats(f"nats://127.0.0.1:{free_port()}")
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def secret_keys() -> str:
    return Fernet.generate_key().decode()


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied by each test that needs a database (migrating is slow)."""
    path = tmp_path_factory.mktemp("db") / "template.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture
def database_url(migrated_db: Path, tmp_path: Path) -> str:
    path = tmp_path / "connector.db"
    path.write_bytes(migrated_db.read_bytes())
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(database_url)
    yield session_factory(engine)
    await engine.dispose()


@pytest.fixture
def box(secret_keys: str) -> SecretBox:
    return SecretBox([secret_keys])


@pytest.fixture
async def bus(private_nats: str) -> AsyncIterator[tuple[NATS, JetStreamContext]]:
    nc = await nats.connect(private_nats)
    js = nc.jetstream()
    await provision_streams(js)
    yield nc, js
    await nc.drain()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


@pytest.fixture
async def sim(imsim: str, http: httpx.AsyncClient) -> Sim:
    return await Sim.create(imsim, http, redeliver_after=1, disconnect_grace=1)


Sink = Callable[[InboundMessage], Awaitable[None]]
Start = Callable[..., Awaitable[tuple[DingTalkAdapter, ChannelHealth]]]


async def ignore(message: InboundMessage) -> None:
    return None


@pytest.fixture
def media_store() -> MediaStore | None:
    """Tests that fetch media override this with a store on the private nats-server."""
    return None


A = TypeVar("A", bound=PlatformAdapter)


@contextlib.asynccontextmanager
async def adapters_of(
    kind: type[A],
    config: dict[str, Any],
    redis: Redis,
    key_prefix: str,
    media_store: MediaStore | None = None,
    first_id: int = 900_000,
) -> AsyncIterator[Callable[..., Awaitable[tuple[A, ChannelHealth]]]]:
    """Start adapters of `kind` on channels with `config` (one simulated app); stopped afterwards."""
    adapters: list[A] = []
    http = httpx.AsyncClient(timeout=5)
    resources = ConnectorResources(http, redis, key_prefix, media_store)

    async def start(sink: Sink = ignore, *, wait: bool = True, **settings: Any) -> tuple[A, ChannelHealth]:
        channel_id = first_id + len(adapters)
        spec = ChannelSpec(
            id=channel_id,
            name="t",
            platform=kind.name,
            enabled=True,
            default_agent_id=None,
            session_scope="conversation",
            config=config,
        )
        health = ChannelHealth(channel_id=channel_id, owner="test")
        options = {"reconnect_min_s": 0.2, **settings}
        adapter = kind(spec, ConnectorSettings(**options), sink, health, resources)  # type: ignore[arg-type]
        adapters.append(adapter)
        await adapter.start()
        if wait:
            assert await adapter.wait_connected(10)
        return adapter, health

    try:
        yield start
    finally:
        for adapter in adapters:
            await adapter.stop()
        await http.aclose()


@pytest.fixture
async def run_adapter(
    sim: Sim, redis_client: Redis, key_prefix: str, media_store: MediaStore | None
) -> AsyncIterator[Start]:
    """Start DingTalk adapters on `sim`'s app; stopped afterwards."""
    config = {"client_id": sim.app, "client_secret": sim.secret, "openapi_endpoint": sim.base}
    async with adapters_of(DingTalkAdapter, config, redis_client, key_prefix, media_store) as start:
        yield start
