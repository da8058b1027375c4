"""Field types and bases shared by the domain schemas."""

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints, model_validator

from imgate_common.fields import HttpUrlStr

__all__ = [
    "MAX_ID",
    "TOTAL_COUNT_HEADER",
    "HttpUrlStr",
    "IdPath",
    "Limit",
    "Name",
    "Offset",
    "QueryText",
    "RequestBody",
    "SafeText",
    "UtcDatetime",
    "text_problem",
]

# Ids are 32-bit integer columns; a larger number in a URL or body is a 422, not a driver error.
MAX_ID = 2**31 - 1
TOTAL_COUNT_HEADER = "X-Total-Count"


def text_problem(value: str) -> str | None:
    """Why `value` cannot be stored (PostgreSQL refuses NUL; lone surrogates are not UTF-8)."""
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text"
    return None


def _storable(value: str) -> str:
    problem = text_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes even for timezone-aware columns; every stored time is UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


SafeText = Annotated[str, AfterValidator(_storable)]
Name = Annotated[SafeText, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
# A search term or filter value in a query string.
QueryText = Annotated[SafeText, StringConstraints(min_length=1, max_length=200)]
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
Limit = Annotated[int, Query(ge=1, le=500, description="Page size")]
Offset = Annotated[int, Query(ge=0, le=10**9, description="Rows to skip")]


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str):
                yield where, key
            yield from _strings(item, where)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, f"{path}.{i}" if path else str(i))


class RequestBody(BaseModel):
    """Base of request bodies: unknown fields are refused, and no string anywhere in the body
    (nested configs included) may hold what the database cannot store."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _storable_strings(cls, data: Any) -> Any:
        for where, text in _strings(data, ""):
            problem = text_problem(text)
            if problem:
                # The location is re-encoded so that the error message itself stays valid UTF-8.
                safe = where.encode("utf-8", "backslashreplace").decode()
                raise ValueError(f"{safe}: {problem}")
        return data
