"""The timer loop every platform's dispatcher runs: pings, redeliveries and closes come due on
it. An async context manager, entered in the app's lifespan."""

import asyncio
import contextlib
from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self

import structlog

log = structlog.get_logger(__name__)


class TimerLoop(ABC):
    """Calls `run_due_timers` every `tick` seconds until the context exits; a failing pass is
    logged and the next one runs."""

    timer_name: str = "imsim-timers"

    def __init__(self, *, tick: float = 0.05) -> None:
        self._tick = tick
        self._timer_task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._timer_task = asyncio.create_task(self._run_timers(), name=self.timer_name)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._timer_task is not None:
            self._timer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer_task
            self._timer_task = None

    async def _run_timers(self) -> None:
        while True:
            try:
                await self.run_due_timers()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("timer_pass_failed", timers=self.timer_name)
            await asyncio.sleep(self._tick)

    @abstractmethod
    async def run_due_timers(self) -> None:
        """One pass over whatever is due now."""
