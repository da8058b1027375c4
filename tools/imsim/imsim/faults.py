"""Fault machinery every platform shares: seeded random streams and sliding rate windows."""

import random
import time
from collections import deque
from typing import Any, TypeVar

from pydantic import BaseModel

Config = TypeVar("Config", bound=BaseModel)


class FaultRandom:
    """Separate random streams per concern, so that e.g. turning latency jitter on never shifts
    which card calls fail or which connection gets a push. Seeded: reproducible runs."""

    def __init__(self, seed: int | None = None) -> None:
        self.reseed(seed)

    def reseed(self, seed: int | None) -> None:
        self.seed = seed
        self.push = self._stream("push")
        self.failure = self._stream("failure")
        self.latency = self._stream("latency")
        self.duplicate = self._stream("duplicate")

    def _stream(self, name: str) -> random.Random:
        return random.Random(f"{self.seed}:{name}") if self.seed is not None else random.Random()


class QpsWindow:
    """Sliding window (one second unless told) of the calls that got through."""

    def __init__(self, span: float = 1.0) -> None:
        self.span = span
        self._times: deque[float] = deque()

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] >= self.span:
            self._times.popleft()

    def take(self, limit: int | None) -> bool:
        """Counts calls with or without a limit, so a limit switched on sees the last window."""
        now = time.monotonic()
        self._trim(now)
        if limit is not None and len(self._times) >= limit:
            return False
        self._times.append(now)
        return True

    def reset_in(self) -> float:
        """Seconds until the oldest call in the window leaves it."""
        now = time.monotonic()
        self._trim(now)
        return max(0.0, self.span - (now - self._times[0])) if self._times else 0.0


def take_counted_failure(config: Config, mode_field: str, count_field: str) -> tuple[Config, str | None]:
    """The failure mode one call takes from `config` (None while the mode is "none") and the
    configuration after it: a count N fails the next N calls, then sets the mode back to "none";
    no count fails every call."""
    mode = getattr(config, mode_field)
    if mode == "none":
        return config, None
    count = getattr(config, count_field)
    if count is not None:
        changes: dict[str, Any] = {count_field: count - 1 or None}
        if count == 1:
            changes[mode_field] = "none"
        config = type(config).model_validate({**config.model_dump(), **changes})
    return config, str(mode)
