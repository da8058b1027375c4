"""Migration 0002 on a database that already holds channels from 0001."""

import asyncio
import json

from sqlalchemy import text

from imgate_common.db.engine import create_engine
from imgate_common.db.migrate import upgrade, upgrade_async


async def test_existing_channels_get_the_new_settings_defaults(any_db_url: str) -> None:
    await asyncio.to_thread(upgrade, any_db_url, "0001")
    engine = create_engine(any_db_url)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO channels (name, platform, config, session_scope, enabled, created_at, "
                "updated_at) VALUES ('old', 'dingtalk', '{}', 'conversation', true, CURRENT_TIMESTAMP, "
                "CURRENT_TIMESTAMP)"
            )
        )
    await upgrade_async(any_db_url)
    async with engine.connect() as conn:
        row = (await conn.execute(text("SELECT user_mapping, card_qps, language FROM channels"))).one()
        tokens = (await conn.execute(text("SELECT count(*) FROM api_tokens"))).scalar()
    await engine.dispose()
    mapping = row[0] if isinstance(row[0], dict) else json.loads(row[0])
    assert (mapping, row[1], row[2], tokens) == ({"mode": "auto"}, 20, "zh-CN", 0)
