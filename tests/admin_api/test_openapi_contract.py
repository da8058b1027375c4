"""Schemathesis over the app's own OpenAPI schema: generated requests (valid and invalid) to every
operation never get a 5xx, and every response matches the schema, on SQLite and on PostgreSQL."""

import asyncio
import logging
import os
import random
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
import structlog
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import text

from imgate_admin.main import create_app
from imgate_admin.settings import AdminSettings
from imgate_common.db.engine import create_engine, session_factory
from imgate_common.db.migrate import upgrade
from imgate_common.db.models import Channel
from tests.support.databases import postgres_database

from .conftest import ADMIN_TOKEN, FLOOR_PLATFORM, ID_FLOOR_NAME, NATS_URL, REDIS_URL, served

# Examples per operation: enough to reach every field's edge cases, small enough that both
# databases finish in about a minute on CI's two cores.
EXAMPLES = int(os.environ.get("IMGATE_SCHEMATHESIS_EXAMPLES", "50"))
HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]


def _number_channels_far_from_one(url: str) -> None:
    """Generated deletes and restarts send control requests; ids far from anyone's 1, 2, 3 keep
    them away from a connector that may share this machine's NATS (see conftest)."""
    first = random.randrange(10**8, 2 * 10**9)

    async def seed() -> None:
        engine = create_engine(url)
        try:
            if engine.dialect.name == "postgresql":
                async with engine.begin() as conn:
                    await conn.execute(
                        text(f"SELECT setval(pg_get_serial_sequence('channels', 'id'), {first})")
                    )
            else:
                async with session_factory(engine)() as session:
                    session.add(Channel(id=first, name=ID_FLOOR_NAME, platform=FLOOR_PLATFORM, enabled=False))
                    await session.commit()
        finally:
            await engine.dispose()

    upgrade(url)
    asyncio.run(seed())


# Generated agents carry generated base URLs, and "test this agent" would call them: the served
# app's calls to providers are answered in process, so nothing leaves this machine.
OFFLINE = httpx.MockTransport(lambda _request: httpx.Response(503))


@pytest.fixture(params=["sqlite", "postgres"])
def api_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The app served on a free port over a fresh database; yields its base URL."""
    if request.param == "sqlite":
        database = f"sqlite+aiosqlite:///{tmp_path / 'contract.db'}"
        stack = None
    else:
        stack = postgres_database()
        database = stack.__enter__()
    try:
        _number_channels_far_from_one(database)
        # Thousands of generated requests need not fill the report with info lines.
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
        with served(_settings(database, tmp_path), OFFLINE) as base:
            yield base
    finally:
        structlog.reset_defaults()
        if stack is not None:
            stack.__exit__(None, None, None)


def _settings(database: str, tmp_path: Path) -> AdminSettings:
    return AdminSettings(
        token=ADMIN_TOKEN,
        database_url=database,
        redis_url=REDIS_URL,
        nats_url=NATS_URL,
        redis_prefix=f"imgate-test-{uuid.uuid4().hex[:8]}",
        secret_keys=Fernet.generate_key().decode(),
        data_dir=tmp_path / "data",
        control_timeout_s=0.3,
        agent_test_timeout_s=1.0,
    )


def _operations(tmp_path: Path) -> list[schemathesis.APIOperation]:
    # The schema as the app builds it (what /openapi.json serves), without a running server.
    spec = create_app(_settings("sqlite+aiosqlite:///unused.db", tmp_path)).openapi()
    loaded = schemathesis.openapi.from_dict(spec)
    return [result.ok() for result in loaded.get_all_operations()]


def test_every_operation_answers_within_its_schema(api_url: str, tmp_path: Path) -> None:
    failures: list[str] = []
    operations = _operations(tmp_path)
    assert len(operations) >= 30
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,  # no .hypothesis/ directory in the work tree
                suppress_health_check=list(HealthCheck),
            )
            def exercise(case: schemathesis.Case) -> None:
                case.call_and_validate(base_url=api_url, headers=HEADERS, checks=CHECKS, timeout=10)

            try:
                exercise()
            except Unsatisfiable:
                continue  # nothing to make invalid (no parameters, no body)
            except (Exception, BaseExceptionGroup) as exc:  # every operation is tried; all are reported
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
    # The run really reached the server, for every operation (the metrics name each route).
    metrics = httpx.get(f"{api_url}/metrics", headers=HEADERS, timeout=10).text
    served_routes = set(
        re.findall(r'imgate_admin_http_requests_total\{method="(\w+)",route="([^"]+)"', metrics)
    )
    assert {(o.method.upper(), o.path) for o in operations} <= served_routes
    total = sum(
        float(v) for v in re.findall(r"^imgate_admin_http_requests_total\{.*\} (\S+)$", metrics, re.M)
    )
    assert total >= len(operations) * EXAMPLES
