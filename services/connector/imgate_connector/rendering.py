"""Turns one channel's reply events into what the user sees: a streaming card, or a plain reply."""

import asyncio
import contextlib
from collections import OrderedDict
from dataclasses import dataclass, field

import structlog

from imgate_common.errors import RateLimited
from imgate_common.messages import (
    Notice,
    ReplyEvent,
    ReplyTarget,
    RunCancelled,
    RunCompleted,
    RunDelta,
    RunFailed,
    RunQueued,
    RunStarted,
)
from imgate_connector.health import ChannelHealth
from imgate_connector.platforms.base import ReplySurface

log = structlog.get_logger()

# Finished runs remembered so a redelivered final event does not answer twice.
FINISHED_MEMORY = 10_000


@dataclass
class RunCard:
    run_id: str
    target: ReplyTarget
    text: str = ""
    shown: str = ""  # what the card displays now
    card: bool = False  # a card exists; False means we fall back to a plain reply
    attempt: int = 1
    dirty: asyncio.Event = field(default_factory=asyncio.Event)
    flusher: asyncio.Task[None] | None = None


class CardRenderer:
    def __init__(self, surface: ReplySurface, health: ChannelHealth, update_interval_s: float) -> None:
        self._surface = surface
        self._health = health
        self._interval = update_interval_s
        self._runs: dict[str, RunCard] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()

    async def handle(self, event: ReplyEvent) -> None:
        if event.run_id in self._finished:
            log.info("reply_duplicate_ignored", run_id=event.run_id, kind=event.kind)
            return
        match event:
            case RunStarted():
                self._follow_attempt(await self._run(event.run_id, event.target), event.attempt)
            case RunDelta():
                run = await self._run(event.run_id, event.target)
                if not self._follow_attempt(run, event.attempt):
                    return  # a late delta of an attempt that died
                run.text += event.text
                if len(run.text) != event.length:
                    log.warning("reply_gap", run_id=event.run_id, have=len(run.text), want=event.length)
                run.dirty.set()
            case RunCompleted():
                await self._finish(event.run_id, event.target, event.text, failed=False)
            case RunFailed():
                text = f"{event.partial_text}\n\n{event.text}" if event.partial_text else event.text
                await self._finish(event.run_id, event.target, text, failed=True)
            case RunCancelled():
                text = f"{event.partial_text}\n\n(stopped)" if event.partial_text else "(stopped)"
                await self._finish(event.run_id, event.target, text, failed=False)
            case RunQueued():
                pass  # shown by the renderer once queued cards exist (connector work)
            case Notice():
                await self._surface.send_text(event.target, event.text)
                self._remember(event.run_id)
                self._health.replies_out += 1

    @staticmethod
    def _follow_attempt(run: RunCard, attempt: int) -> bool:
        """A runner that died mid-answer is replaced by a redo that writes the answer again:
        start the text over for a newer attempt; False for events of an older one."""
        if attempt > run.attempt:
            run.attempt, run.text = attempt, ""
        return attempt == run.attempt

    async def close(self) -> None:
        for run in self._runs.values():
            if run.flusher:
                run.flusher.cancel()
        await asyncio.gather(*(r.flusher for r in self._runs.values() if r.flusher), return_exceptions=True)
        self._runs.clear()

    async def _run(self, run_id: str, target: ReplyTarget) -> RunCard:
        run = self._runs.get(run_id)
        if run is None:
            run = self._runs[run_id] = RunCard(run_id, target)
            try:
                await self._surface.open_card(run_id, target)
                run.card = True
                run.flusher = asyncio.create_task(self._flush_loop(run))
            except Exception as exc:
                self._platform_error(exc, "card_open_failed", run_id)
        return run

    async def _flush_loop(self, run: RunCard) -> None:
        """Push the newest text at most once per interval, however fast deltas arrive."""
        while True:
            await run.dirty.wait()
            run.dirty.clear()
            text = run.text
            if text and text != run.shown:
                try:
                    await self._surface.update_card(run.run_id, text)
                    run.shown = text
                except Exception as exc:
                    self._platform_error(exc, "card_update_failed", run.run_id)
            await asyncio.sleep(self._interval)

    async def _finish(self, run_id: str, target: ReplyTarget, text: str, *, failed: bool) -> None:
        run = self._runs.get(run_id) or await self._run(run_id, target)
        if run.flusher:
            run.flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run.flusher
        delivered = False
        if run.card:
            try:
                await self._surface.close_card(run_id, text, failed=failed)
                delivered = True
            except Exception as exc:
                self._platform_error(exc, "card_close_failed", run_id)
        if not delivered:
            # The card could not show the answer: a plain reply is better than silence.
            await self._surface.send_text(target, text)
        self._runs.pop(run_id, None)
        self._remember(run_id)
        self._health.replies_out += 1

    def _remember(self, run_id: str) -> None:
        self._finished[run_id] = None
        while len(self._finished) > FINISHED_MEMORY:
            self._finished.popitem(last=False)

    def _platform_error(self, exc: Exception, event: str, run_id: str) -> None:
        if isinstance(exc, RateLimited):
            self._health.rate_limit_hits += 1
        self._health.error(f"{event}: {exc}")
        log.warning(event, run_id=run_id, error=str(exc))
