"""platform-neutral names: an LDAP user filter names the employee id {employee_id}

The shared models now say employee id and tenant id where they said DingTalk's staff id and corp
id. Identities were keyed by the neutral columns already (tenant_id, platform_user_id); what a
channel stores under DingTalk's word is the LDAP user filter's placeholder.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out rather than imported: a migration keeps meaning what it meant when it was written.
OLD_PLACEHOLDER = "{staff_id}"
NEW_PLACEHOLDER = "{employee_id}"

channels = sa.table("channels", sa.column("id", sa.Integer()), sa.column("user_mapping", sa.JSON()))


def _rename_placeholder(old: str, new: str) -> None:
    connection = op.get_bind()
    for row in connection.execute(sa.select(channels.c.id, channels.c.user_mapping)):
        mapping: Any = row.user_mapping
        if not isinstance(mapping, dict) or mapping.get("mode") != "ldap":
            continue
        user_filter = mapping.get("user_filter")
        if not isinstance(user_filter, str) or old not in user_filter:
            continue
        updated = {**mapping, "user_filter": user_filter.replace(old, new)}
        connection.execute(channels.update().where(channels.c.id == row.id).values(user_mapping=updated))


def upgrade() -> None:
    _rename_placeholder(OLD_PLACEHOLDER, NEW_PLACEHOLDER)


def downgrade() -> None:
    _rename_placeholder(NEW_PLACEHOLDER, OLD_PLACEHOLDER)
