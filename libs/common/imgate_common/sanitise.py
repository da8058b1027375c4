"""Text made storable: what users, directories and models send is cleaned at the storage boundary.

PostgreSQL refuses NUL in text and values longer than their column; neither database can store
a lone UTF-16 surrogate (it has no UTF-8 form). One message carrying any of them must not fail
its insert on every delivery, so every row is cleaned as it is flushed: those characters are
dropped and strings are cut to their column's length.
"""

import re
from typing import Any

from sqlalchemy import JSON, String, TypeDecorator, event
from sqlalchemy.orm import Session, UOWTransaction

# NUL, and the surrogate code points (valid in a Python str, never in UTF-8).
_REFUSED = re.compile("[\x00\ud800-\udfff]")


def clean_text(value: str, max_length: int | None = None) -> str:
    """`value` without the characters databases refuse, at most `max_length` characters."""
    cleaned = _REFUSED.sub("", value)
    if max_length is not None and len(cleaned) > max_length:
        cleaned = cleaned[:max_length]
    return cleaned


def clean_json(value: Any) -> Any:
    """Every string inside a JSON value cleaned (keys too)."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_json(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_json(v) for v in value]
    return value


def clean_row(row: object) -> None:
    """Clean the string and JSON attributes of one mapped object in place."""
    mapper = getattr(row, "__mapper__", None)
    if mapper is None:
        return
    for attribute in mapper.column_attrs:
        kind = attribute.columns[0].type
        if isinstance(kind, TypeDecorator):  # SQLModel's AutoString wraps a String
            kind = kind.impl_instance
        value = getattr(row, attribute.key, None)
        if isinstance(value, str) and isinstance(kind, String):
            cleaned = clean_text(value, kind.length)
        elif isinstance(value, dict | list) and isinstance(kind, JSON):
            cleaned = clean_json(value)
        else:
            continue
        if cleaned != value:
            setattr(row, attribute.key, cleaned)


def _before_flush(session: Session, _flush: UOWTransaction, _instances: object) -> None:
    for row in (*session.new, *session.dirty):
        clean_row(row)


def guard_storage() -> None:
    """Clean every row every session flushes (idempotent)."""
    if not event.contains(Session, "before_flush", _before_flush):
        event.listen(Session, "before_flush", _before_flush)
