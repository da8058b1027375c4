"""Summaries every platform's counters share: latency percentiles."""

import math
from collections import deque
from typing import Any

# ACK latencies kept for percentiles; a benchmark pushing more than this reads the newest ones.
LATENCY_SAMPLES = 100_000


def percentile(sorted_values: list[float], share: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least `share` of the values at or below."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(share * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary(samples: deque[float]) -> dict[str, Any]:
    values = sorted(samples)
    return {
        "count": len(values),
        "p50": percentile(values, 0.50),
        "p99": percentile(values, 0.99),
        "max": values[-1] if values else None,
        "mean": round(sum(values) / len(values), 3) if values else None,
    }
