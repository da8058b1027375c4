"""Response bodies of /api/v1/audit."""

from typing import Any

from pydantic import BaseModel

from imgate_admin.destinations import mask_urls
from imgate_admin.schemas import UtcDatetime
from imgate_common.db.models import AuditEntry


class AuditRead(BaseModel):
    id: int
    actor: str
    action: str
    target: str
    detail: dict[str, Any]
    at: UtcDatetime

    @classmethod
    def from_row(cls, entry: AuditEntry) -> "AuditRead":
        assert entry.id is not None
        return cls(
            id=entry.id,
            actor=entry.actor,
            action=entry.action,
            target=entry.target,
            # Entries written before URLs were masked at write are masked here.
            detail=mask_urls(entry.detail),
            at=entry.at,
        )
