"""Bring a database to the newest schema: `python -m imgate_common.db.migrate [upgrade|downgrade REV]`."""

import asyncio
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config

from imgate_common.settings import CommonSettings

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url)
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


async def upgrade_async(database_url: str) -> None:
    """Run from async code: env.py starts its own event loop, so it runs in a worker thread."""
    await asyncio.to_thread(upgrade, database_url)


def main(argv: list[str]) -> int:
    url = CommonSettings().database_url
    if not argv or argv[0] == "upgrade":
        upgrade(url, argv[1] if len(argv) > 1 else "head")
    elif argv[0] == "downgrade" and len(argv) == 2:
        downgrade(url, argv[1])
    elif argv[0] == "revision" and len(argv) == 2:  # for developers: autogenerate a revision
        command.revision(alembic_config(url), message=argv[1], autogenerate=True)
    else:
        print("usage: python -m imgate_common.db.migrate [upgrade [REV] | downgrade REV]")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
