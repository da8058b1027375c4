"""Groups model chunks into deltas: flushed after an interval or a size, whichever comes first.

The first chunk goes out alone and at once: it is what the user waits for (first visible text),
and holding it for the interval would add up to `interval_s` to every answer whose model
answers faster than that. Only what follows is coalesced.
"""

import time


class DeltaBatcher:
    def __init__(self, interval_s: float, max_chars: int) -> None:
        self._interval = interval_s
        self._max_chars = max_chars
        self._pending: list[str] = []
        self._pending_chars = 0
        self._last_flush = time.monotonic()
        self.text = ""  # everything flushed so far

    def add(self, chunk: str) -> str | None:
        """Take a chunk; return the batch to send now, or None to keep collecting."""
        self._pending.append(chunk)
        self._pending_chars += len(chunk)
        first = not self.text
        due = time.monotonic() - self._last_flush >= self._interval
        if first or due or self._pending_chars >= self._max_chars:
            return self.flush()
        return None

    def flush(self) -> str | None:
        if not self._pending:
            return None
        batch = "".join(self._pending)
        self._pending.clear()
        self._pending_chars = 0
        self._last_flush = time.monotonic()
        self.text += batch
        return batch
