"""Each held channel's health into the status store, every few seconds and at once on a change."""

import asyncio
import contextlib

import structlog

from imgate_common.status import ChannelStatusStore
from imgate_connector.holdings import HeldChannels
from imgate_connector.lease import ChannelLease

log = structlog.get_logger()


class StatusPublisher:
    def __init__(self, lease: ChannelLease, status: ChannelStatusStore, interval_s: float) -> None:
        self._lease = lease
        self._status = status
        self._interval_s = interval_s
        self._due = asyncio.Event()

    def due(self) -> None:
        """Publish now: a channel's state changed."""
        self._due.set()

    async def run(self, held: HeldChannels) -> None:
        # The stop flag ends the loop, not only a cancellation: on Python 3.11 a wait_for inside
        # a library (asyncpg, nats-py) can swallow the cancellation.
        while not held.stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), self._interval_s)
            self._due.clear()
            for channel_id, channel in list(held.running.items()):
                if not self._lease.valid(channel_id):
                    continue  # never overwrite what the channel's new owner writes
                try:
                    await self._status.put(channel.health.snapshot())
                except Exception as exc:
                    log.warning("status_write_failed", channel_id=channel_id, error=str(exc))
                    break
