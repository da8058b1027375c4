"""Rotation: each stored Fernet token is rewritten under the first key of the ring.

Each row is updated only if it still holds the token that was read (compare-and-set), so an edit
made meanwhile is never overwritten by the rotated old value; a rerun picks up anything skipped.
"""

from dataclasses import dataclass, field

import structlog
from cryptography.fernet import InvalidToken
from pydantic import BaseModel
from sqlalchemy import update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_admin.audit.service import record_action
from imgate_common.channels import ENCRYPTED_COLUMNS
from imgate_common.secrets import SecretBox

log = structlog.get_logger()


class RotationReport(BaseModel):
    rotated: int
    unreadable: list[str]  # "channels.secrets_enc#3": no configured key opens it
    changed_meanwhile: int  # edited during the rotation; already under the newest key


@dataclass
class _Tally:
    rotated: int = 0
    changed: int = 0
    unreadable: list[str] = field(default_factory=list)


async def rotate_secrets(session: AsyncSession, box: SecretBox, actor: str) -> RotationReport:
    tally = _Tally()
    for table, column in ENCRYPTED_COLUMNS:
        attr = getattr(table, column)
        rows = (await session.exec(select(table.id, attr).where(col(attr).is_not(None)))).all()
        for row_id, token in rows:
            try:
                fresh = box.rotate(token)
            except InvalidToken:
                tally.unreadable.append(f"{table.__tablename__}.{column}#{row_id}")
                continue
            statement = (
                update(table).where(col(table.id) == row_id, col(attr) == token).values({column: fresh})
            )
            result = await session.exec(statement)
            if result.rowcount:
                tally.rotated += 1
            else:
                tally.changed += 1
    report = RotationReport(
        rotated=tally.rotated, unreadable=tally.unreadable, changed_meanwhile=tally.changed
    )
    record_action(session, actor, "secrets.rotate", "secrets", report.model_dump())
    await session.commit()
    log.info("secrets_rotated", rotated=tally.rotated, unreadable=len(tally.unreadable))
    return report
