"""Field types shared by the domain schemas."""

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, StringConstraints

from imgate_common.fields import HttpUrlStr

__all__ = ["HttpUrlStr", "Name", "UtcDatetime"]


def _as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes even for timezone-aware columns; every stored time is UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
