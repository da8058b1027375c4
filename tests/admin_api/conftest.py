"""Fixtures: the admin app on SQLite and on PostgreSQL, with real Redis and NATS beside it."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import nats
import pytest
from cryptography.fernet import Fernet
from fastapi import FastAPI
from nats.aio.client import Client as NATS
from redis.asyncio import Redis

from imgate_admin.deps import Resources
from imgate_admin.main import create_app
from imgate_admin.settings import AdminSettings
from imgate_common.secrets import SecretBox

REDIS_URL = "redis://127.0.0.1:6379/0"
NATS_URL = "nats://127.0.0.1:4222"
PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
ADMIN_TOKEN = "admin-token-" + uuid.uuid4().hex
CLIENT_SECRET = "dt-secret-" + uuid.uuid4().hex
API_KEY = "sk-test-" + uuid.uuid4().hex


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh database for this test session, dropped at the end."""
    name = f"imgate_test_{uuid.uuid4().hex[:12]}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(f"{PG_SERVER}/postgres")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    yield f"{PG_SERVER}/{name}"
    asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'admin.db'}"
    url: str = request.getfixturevalue("postgres_database")
    return url


async def _empty_tables(url: str) -> None:
    """Each PostgreSQL test starts from empty tables (and ids from 1); the schema stays."""
    conn = await asyncpg.connect(url)
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
def redis_prefix() -> str:
    return f"imgate-test-{uuid.uuid4().hex}"


@pytest.fixture
async def settings(
    database_url: str,
    secret_key: str,
    redis_prefix: str,
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
        "IMGATE_REDIS_PREFIX": redis_prefix,
        "IMGATE_SECRET_KEYS": secret_key,
        "IMGATE_DATA_DIR": str(tmp_path / "data"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield AdminSettings()
    if database_url.startswith("postgresql"):
        await _empty_tables(database_url)


@pytest.fixture
async def app(settings: AdminSettings) -> AsyncIterator[FastAPI]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
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


@pytest.fixture
async def redis(redis_prefix: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    yield client
    keys = [k async for k in client.scan_iter(match=f"{redis_prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def nc() -> AsyncIterator[NATS]:
    conn = await nats.connect(NATS_URL, name="imgate-admin-api-tests")
    yield conn
    await conn.close()


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
