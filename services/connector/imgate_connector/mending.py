"""Cards a failed card call left open, closed once the platform takes card calls again.

A final whose card could not be closed goes out as plain text at once; the card itself would
go on spinning "thinking…" (or show half the answer) beside it. The mender closes such a card
later, with a line that points to the plain answer, so the user sees one copy of every answer
and no card that never ends. It retries with back-off, for a bounded time, and reports a card
it could not close; a card call that succeeds meanwhile (the platform is back) makes every
waiting card try again at once, and while card calls are paused after repeated failures a card
tries again as soon as they resume.
"""

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass

import structlog

from imgate_connector.health import ChannelHealth
from imgate_connector.metrics import CARDS_MENDED
from imgate_connector.platforms.base import CardsUnavailable, ReplySurface

log = structlog.get_logger()

# Cards waiting to be closed per channel at most; beyond that the oldest are given up (counted).
MAX_PENDING = 1000


@dataclass(frozen=True)
class MendPolicy:
    first_retry_s: float = 2.0
    max_retry_s: float = 30.0
    retry_for_s: float = 1800.0  # longer than any outage the design expects the platform to have


class CardMender:
    def __init__(self, surface: ReplySurface, health: ChannelHealth, policy: MendPolicy) -> None:
        self._surface = surface
        self._health = health
        self._policy = policy
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._back = asyncio.Event()  # replaced each time it is set: wakes each sleeper once

    @property
    def pending(self) -> int:
        return len(self._pending)

    def platform_back(self) -> None:
        """A card call just succeeded: the cards waiting to be closed try again now."""
        if self._pending:
            self._back.set()
            self._back = asyncio.Event()

    def close_later(self, card_id: str, platform: str, text: str, *, failed: bool = False) -> None:
        """Close the card with `text`, once the platform lets us; never raises."""
        if (earlier := self._pending.pop(card_id, None)) is not None:
            earlier.cancel()
        if len(self._pending) >= MAX_PENDING:
            oldest = next(iter(self._pending))
            self._pending.pop(oldest).cancel()
            self._gave_up(oldest, platform, "too many cards waiting to be closed")
        task = asyncio.create_task(self._mend(card_id, platform, text, failed), name=f"mend-{card_id}")
        self._pending[card_id] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._pending.get(card_id) is done:
                del self._pending[card_id]

        task.add_done_callback(forget)

    async def _mend(self, card_id: str, platform: str, text: str, failed: bool) -> None:
        deadline = time.monotonic() + self._policy.retry_for_s
        delay = self._policy.first_retry_s
        wait = delay * random.uniform(0.8, 1.2)
        while True:
            back = self._back
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(back.wait(), wait)
            try:
                await self._surface.close_card(card_id, text, failed=failed)
            except Exception as exc:
                if time.monotonic() + delay >= deadline:
                    self._gave_up(card_id, platform, f"{type(exc).__name__}: {exc}")
                    return
                if isinstance(exc, CardsUnavailable):
                    # Card calls are paused: try again as they resume (spread over a moment,
                    # so the waiting cards do not all go at once), not a back-off later.
                    wait = exc.retry_in_s + random.uniform(0.1, self._policy.first_retry_s)
                    continue
                delay = min(delay * 2, self._policy.max_retry_s)
                wait = delay * random.uniform(0.8, 1.2)
                continue
            self.platform_back()  # the others may well get through now too
            CARDS_MENDED.labels(platform, "closed").inc()
            log.info("card_mended", card_id=card_id)
            return

    def _gave_up(self, card_id: str, platform: str, reason: str) -> None:
        CARDS_MENDED.labels(platform, "left_open").inc()
        self._health.error(f"card left open: {reason}")
        log.warning("card_left_open", card_id=card_id, reason=reason)

    async def close(self) -> None:
        """Stop trying (the channel moves or stops)."""
        tasks = list(self._pending.values())
        self._pending.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
