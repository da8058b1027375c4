"""The channels this replica runs, each under its lease: taken, restarted and let go one at a
time, so a start and a stop of the same channel never overlap."""

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from imgate_common.status import ChannelStatusStore
from imgate_connector.channel import ChannelWiring, RunningChannel
from imgate_connector.lease import ChannelLease
from imgate_connector.records import ChannelCatalog, ChannelRecord

log = structlog.get_logger()


class HeldChannels:
    def __init__(
        self,
        catalog: ChannelCatalog,
        lease: ChannelLease,
        wiring: ChannelWiring,
        status: ChannelStatusStore,
        on_change: Callable[[], None],
    ) -> None:
        self._catalog = catalog
        self._lease = lease
        self._wiring = wiring
        self._status = status
        self._on_change = on_change
        self.running: dict[int, RunningChannel] = {}
        self.stopping = False  # set at shutdown: no channel starts after it
        self._lock = asyncio.Lock()

    async def take(self, channel_id: int) -> RunningChannel | None:
        """Acquire the channel's lease and start it; None when it is not to run or not free."""
        async with self._lock:
            record = self._catalog.get(channel_id)
            if self.stopping or record is None or not record.spec.enabled:
                return None
            if channel_id in self.running:
                return self.running[channel_id]
            fence = await self._lease.acquire(channel_id)
            if fence is None:
                return None
            try:
                return await self._start(record, fence)
            except Exception as exc:
                await self._lease.release(channel_id)
                log.exception("channel_start_failed", channel_id=channel_id, error=str(exc))
                return None

    async def restart(self, record: ChannelRecord, *, reason: str) -> RunningChannel | None:
        """Stop and start again under the lease it holds (None: the lease is gone meanwhile)."""
        async with self._lock:
            await self._stop_locked(record.spec.id, reason=reason, release=False)
            fence = self._lease.fence(record.spec.id)
            if fence is None:
                return None
            return await self._start(record, fence)

    async def stop(
        self,
        channel_id: int,
        *,
        reason: str,
        release: bool = True,
        forget_status: bool = False,
        drain_s: float = 0.0,
    ) -> bool:
        """Stop the channel if it runs here; release its lease (unless told not to) either way."""
        async with self._lock:
            return await self._stop_locked(
                channel_id, reason=reason, release=release, forget_status=forget_status, drain_s=drain_s
            )

    async def stop_all(self, *, drain_s: float) -> list[int]:
        """Shutdown: stop every channel, releasing its lease; the ones that ran here."""
        self.stopping = True
        async with self._lock:  # a start in progress finishes first, and none begins after
            channels = list(self.running)
            # All at once, so shutdown takes one drain period however many channels there are.
            await asyncio.gather(
                *(self._stop_locked(c, reason="shutdown", drain_s=drain_s) for c in channels),
                return_exceptions=True,
            )
        return channels

    async def _start(self, record: ChannelRecord, fence: int) -> RunningChannel:
        spec = record.spec
        channel = await self._wiring.start(record)
        self.running[spec.id] = channel
        self._on_change()
        log.info("channel_started", channel_id=spec.id, platform=spec.platform, fence=fence)
        return channel

    async def _stop_locked(
        self,
        channel_id: int,
        *,
        reason: str,
        release: bool = True,
        forget_status: bool = False,
        drain_s: float = 0.0,
    ) -> bool:
        channel = self.running.pop(channel_id, None)
        if channel is None:
            if release:
                await self._lease.release(channel_id)
            return False
        await channel.stop(drain_s)
        if forget_status or release:
            with contextlib.suppress(Exception):
                await self._status.delete(channel_id)
        if release:
            with contextlib.suppress(Exception):
                await self._lease.release(channel_id)
        log.info("channel_stopped", channel_id=channel_id, reason=reason)
        return True
