"""HTTP routes of /api/v1/audit."""

from typing import Annotated

from fastapi import APIRouter, Query, Response

from imgate_admin.audit import service
from imgate_admin.audit.schemas import AuditRead
from imgate_admin.deps import SessionDep
from imgate_admin.schemas import TOTAL_COUNT_HEADER, Limit, Offset, QueryText

router = APIRouter(prefix="/audit", tags=["audit"])

Filter = Annotated[QueryText | None, Query()]


@router.get("", response_model=list[AuditRead])
async def list_audit_entries(
    session: SessionDep,
    response: Response,
    target: Filter = None,
    action: Filter = None,
    actor: Filter = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[AuditRead]:
    """Newest first; `X-Total-Count` holds the number of matching entries."""
    entries, total = await service.list_entries(
        session, target=target, action=action, actor=actor, limit=limit, offset=offset
    )
    response.headers[TOTAL_COUNT_HEADER] = str(total)
    return [AuditRead.from_row(e) for e in entries]
