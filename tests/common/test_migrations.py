"""Migrations: both databases reach the newest schema, and the schema matches the models."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlmodel import SQLModel

from imgate_common.db import models  # noqa: F401
from imgate_common.db.engine import create_engine
from imgate_common.db.migrate import downgrade, upgrade_async


async def test_upgrade_matches_models_and_downgrade_empties(any_db_url: str) -> None:
    await upgrade_async(any_db_url)
    engine = create_engine(any_db_url)
    async with engine.connect() as conn:
        tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        diff = await conn.run_sync(
            lambda c: compare_metadata(MigrationContext.configure(c), SQLModel.metadata)
        )
    assert {"channels", "agents", "users", "im_identities", "conversations", "messages"} <= tables
    assert diff == [], f"models and migrations disagree: {diff}"
    await upgrade_async(any_db_url)  # idempotent
    import asyncio

    await asyncio.to_thread(downgrade, any_db_url, "base")
    async with engine.connect() as conn:
        left = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    assert left <= {"alembic_version"}
    await engine.dispose()
