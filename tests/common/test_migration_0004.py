"""Migration 0004 on a database whose channels were written with DingTalk's words."""

import asyncio
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from imgate_common.db.engine import create_engine
from imgate_common.db.migrate import downgrade, upgrade, upgrade_async


async def test_0004_renames_the_ldap_filters_staff_id_placeholder_and_back(any_db_url: str) -> None:
    await asyncio.to_thread(upgrade, any_db_url, "0003")
    channels = sa.table(
        "channels",
        sa.column("id", sa.Integer()),
        sa.column("name", sa.String()),
        sa.column("platform", sa.String()),
        sa.column("config", sa.JSON()),
        sa.column("session_scope", sa.String()),
        sa.column("user_mapping", sa.JSON()),
        sa.column("enabled", sa.Boolean()),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("updated_at", sa.DateTime(timezone=True)),
    )
    ldap = {
        "mode": "ldap",
        "url": "ldap://dir",
        "user_filter": "(|(employeeNumber={staff_id})(uid={user_id}))",
    }
    http = {"mode": "http", "url": "http://erp", "note": "{staff_id}"}  # only an LDAP filter has placeholders
    now = datetime.now(UTC)
    engine = create_engine(any_db_url)
    async with engine.begin() as conn:
        await conn.execute(
            channels.insert(),
            [
                {
                    "id": n,
                    "name": f"c{n}",
                    "platform": "dingtalk",
                    "config": {"client_id": "k"},
                    "session_scope": "conversation",
                    "user_mapping": mapping,
                    "enabled": True,
                    "created_at": now,
                    "updated_at": now,
                }
                for n, mapping in ((1, ldap), (2, http), (3, {"mode": "auto"}))
            ],
        )

    async def mappings() -> dict[int, Any]:
        async with engine.connect() as conn:
            rows = await conn.execute(sa.select(channels.c.id, channels.c.user_mapping))
            return {row.id: row.user_mapping for row in rows}

    await upgrade_async(any_db_url)
    upgraded = await mappings()
    assert upgraded[1] == {**ldap, "user_filter": "(|(employeeNumber={employee_id})(uid={user_id}))"}
    assert upgraded[2] == http and upgraded[3] == {"mode": "auto"}
    await asyncio.to_thread(downgrade, any_db_url, "0003")
    assert await mappings() == {1: ldap, 2: http, 3: {"mode": "auto"}}
    await engine.dispose()
