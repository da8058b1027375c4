"""The audit log of admin actions; callers pass details that never include secrets."""

from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.db.models import AuditEntry

ACTOR = "admin"  # one shared token today; per-user actors arrive with console logins


def record_action(session: AsyncSession, action: str, target: str, detail: dict[str, Any]) -> None:
    """Add an audit row to the caller's transaction, so it commits or rolls back with the change."""
    session.add(AuditEntry(actor=ACTOR, action=action, target=target, detail=detail))
