"""Fixtures shared by every test package: databases, Redis, NATS on the machine's real servers."""

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.db.engine import create_engine, session_factory
from imgate_common.db.migrate import upgrade_async
from tests.support.databases import postgres_database

NATS_URL = "nats://127.0.0.1:4222"
REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def any_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test using this runs once on SQLite and once on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/test.db"
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """A migrated SQLite database for tests that are about logic, not the database engine."""
    url = f"sqlite+aiosqlite:///{tmp_path}/logic.db"
    await upgrade_async(url)
    engine = create_engine(url)
    yield session_factory(engine)
    await engine.dispose()


@pytest.fixture
def key_prefix() -> str:
    """A Redis key namespace of its own per test."""
    return f"imgate-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def redis_client(key_prefix: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    yield client
    keys = [k async for k in client.scan_iter(f"{key_prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def nats_client() -> AsyncIterator[NATS]:
    client = await nats.connect(NATS_URL)
    yield client
    await client.drain()


@pytest.fixture(scope="module")
def private_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A nats-server of the test module's own (tests that create and delete whole streams)."""
    from tests.support.nats_server import private_nats_server

    with private_nats_server(tmp_path_factory) as url:
        yield url


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """llama-cpp-python opens two /dev/null files at import and never closes them; close them
    so the interpreter's exit does not print ResourceWarnings after the test summary."""
    import sys

    utils = sys.modules.get("llama_cpp._utils")
    for name in ("outnull_file", "errnull_file"):
        handle = getattr(utils, name, None)
        if handle is not None:
            handle.close()
