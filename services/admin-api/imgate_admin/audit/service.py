"""Writing and reading the audit log; callers pass details that never include secrets."""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_admin.destinations import mask_urls
from imgate_common.db.models import AuditEntry


def record_action(
    session: AsyncSession, actor: str, action: str, target: str, detail: dict[str, Any]
) -> None:
    """Add an audit row to the caller's transaction, so it commits or rolls back with the change.
    Credentials inside URLs in `detail` are stored masked."""
    session.add(AuditEntry(actor=actor, action=action, target=target, detail=mask_urls(detail)))


async def list_entries(
    session: AsyncSession,
    *,
    target: str | None,
    action: str | None,
    actor: str | None,
    limit: int,
    offset: int,
) -> tuple[Sequence[AuditEntry], int]:
    query = select(AuditEntry)
    if target is not None:
        query = query.where(col(AuditEntry.target) == target)
    if action is not None:
        query = query.where(col(AuditEntry.action) == action)
    if actor is not None:
        query = query.where(col(AuditEntry.actor) == actor)
    total = (await session.exec(select(func.count()).select_from(query.subquery()))).one()
    page = query.order_by(col(AuditEntry.id).desc()).limit(limit).offset(offset)
    return (await session.exec(page)).all(), int(total)
