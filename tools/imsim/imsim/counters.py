"""What every platform's counters share: API calls by route, status and outcome, and latency
percentiles."""

import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from imsim.call_recorder import ApiCall

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


@dataclass
class ApiCallCounts:
    """Calls of a platform's API, counted by route (`PUT /cards/{card_id}`), status and outcome."""

    by_route: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    by_outcome: Counter[str] = field(default_factory=Counter)

    def record(self, call: ApiCall) -> None:
        self.by_route[f"{call.method} {call.route or call.path}"] += 1
        self.by_status[call.status] += 1
        self.by_outcome[call.outcome] += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "total": sum(self.by_route.values()),
            "by_route": dict(sorted(self.by_route.items())),
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "by_outcome": dict(sorted(self.by_outcome.items())),
        }
