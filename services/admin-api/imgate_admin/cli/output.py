"""Printing results: JSON for scripts (--json), aligned text for people."""

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import typer


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers], *[["" if v is None else str(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(value.ljust(widths[i]) for i, value in enumerate(row)).rstrip() for row in cells]
    return "\n".join(lines)


def fields(data: dict[str, Any], names: Sequence[str] | None = None) -> str:
    keys = list(names or data)
    width = max(len(k) for k in keys)
    return "\n".join(f"{k.ljust(width)}  {_show(data.get(k))}" for k in keys)


def _show(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else str(value)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def ago(timestamp: str | None) -> str:
    if not timestamp:
        return "-"
    at = datetime.fromisoformat(timestamp)
    return duration((datetime.now(UTC) - at).total_seconds()) + " ago"
