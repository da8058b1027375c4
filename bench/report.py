"""Figures beside their baselines: the printed table and the results JSON."""

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# A per-service row as the service modules (connector.py, router.py, runner.py) return it:
# (figure, ours, baseline, ratio), already formatted.
Row = tuple[str, str, str, str]


@dataclass
class Figure:
    """One measured figure: imgate's value beside the two SDK-style baselines'."""

    key: str  # stable name in the JSON, e.g. "first_text_ms_p50"
    name: str  # what the table prints
    unit: str  # "ms", "calls", "msgs", "replies/s", "cores", "MB"
    imgate: float | None
    baseline: float | None = None  # the SDK example, card updated on every chunk
    baseline_interval: float | None = None  # the same, card updated every 0.8 s
    goal: str = ""
    met: bool | None = None  # None: no goal, or nothing to judge it by
    notes: dict[str, Any] = field(default_factory=dict)

    def ratio(self, baseline: float | None) -> float | None:
        """imgate ÷ baseline: below 1 means imgate's figure is smaller."""
        if self.imgate is None or baseline is None or not math.isfinite(self.imgate):
            return None
        if baseline == 0:
            return None if self.imgate != 0 else 1.0
        return self.imgate / baseline

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = _clean(self.ratio(self.baseline))
        data["ratio_interval"] = _clean(self.ratio(self.baseline_interval))
        for key in ("imgate", "baseline", "baseline_interval"):
            data[key] = _clean(data[key])
        return data


def _clean(value: float | None) -> float | None:
    """JSON has no NaN: a figure that could not be measured is null."""
    if value is None or not math.isfinite(value):
        return None
    return round(value, 3)


def fmt(value: float | None, unit: str) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if unit in ("ms", "MB", "msgs"):
        return f"{value:,.0f}"
    if unit == "cores":
        return f"{value:.2f}"
    if unit == "calls" and value != int(value):
        return f"{value:.1f}"
    if unit == "calls":
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table(figures: list[Figure]) -> str:
    header = ("figure", "imgate", "baseline", "ratio", "base 0.8s", "ratio", "goal")
    lines = [header]
    for f in figures:
        goal = f.goal
        if f.goal and f.met is not None:
            goal = f"{f.goal} {'met' if f.met else 'MISSED'}"
        lines.append(
            (
                f"{f.name} ({f.unit})",
                fmt(f.imgate, f.unit),
                fmt(f.baseline, f.unit),
                fmt_ratio(f.ratio(f.baseline)),
                fmt(f.baseline_interval, f.unit),
                fmt_ratio(f.ratio(f.baseline_interval)),
                goal,
            )
        )
    return _columns(lines, right=range(1, 6))


def rows_table(rows: list[Row]) -> str:
    return _columns([("figure", "ours", "baseline", "ratio"), *rows], right=range(1, 3))


def _columns(lines: Sequence[tuple[str, ...]], right: range) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for n, line in enumerate(lines):
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(line)
        ]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def markdown_table(figures: list[Figure]) -> str:
    """The same table as markdown, for docs/performance.md."""
    out = [
        "| figure | imgate | baseline (every chunk) | ratio | baseline (0.8 s) | ratio | goal |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for f in figures:
        goal = f.goal + ("" if f.met is None or not f.goal else (" ✅" if f.met else " ❌ missed"))
        out.append(
            f"| {f.name} ({f.unit}) | {fmt(f.imgate, f.unit)} | {fmt(f.baseline, f.unit)} | "
            f"{fmt_ratio(f.ratio(f.baseline))} | {fmt(f.baseline_interval, f.unit)} | "
            f"{fmt_ratio(f.ratio(f.baseline_interval))} | {goal} |"
        )
    return "\n".join(out)


def _finite(value: Any) -> Any:
    """NaN (a figure with no data, e.g. a percentile of nothing) becomes null: JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def utc_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def write_results(payload: dict[str, Any], directory: Path, tag: str = "") -> Path:
    """`<directory>/<UTC timestamp>[-tag].json` plus the same as `latest[-tag].json`; returns the first."""
    directory.mkdir(parents=True, exist_ok=True)
    suffix = f"-{tag}" if tag else ""
    path = directory / f"{payload['started_at']}{suffix}.json"
    text = json.dumps(_finite(payload), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    path.write_text(text)
    (directory / f"latest{suffix}.json").write_text(text)
    return path


def figures_from_json(data: dict[str, Any]) -> list[Figure]:
    names = {f.name for f in fields(Figure)}
    return [Figure(**{k: v for k, v in item.items() if k in names}) for item in data["figures"]]


if __name__ == "__main__":
    # `python bench/report.py [results.json]`: the table of a run as markdown (docs/performance.md).
    import sys

    source = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results" / "latest.json"
    print(markdown_table(figures_from_json(json.loads(source.read_text()))))
