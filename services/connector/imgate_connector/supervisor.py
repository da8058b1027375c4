"""Which channels this replica runs: the parts that decide it, wired together and kept going.

Every few seconds the supervisor compares its channels with the database, so a missed control
message is not a lost change; the placement renews leases and takes and hands over channels;
the control handler answers `channel.control.*`; the status publisher reports each channel's
health. On shutdown it releases its leases and tells the others, so they take over at once.
"""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.messages import ControlReply, ControlRequest
from imgate_common.secrets import SecretBox
from imgate_common.status import ChannelStatusStore
from imgate_connector.channel import ChannelWiring, RunningChannel
from imgate_connector.control import ControlHandler
from imgate_connector.holdings import HeldChannels
from imgate_connector.lease import ChannelLease, ReplicaSet
from imgate_connector.placement import ChannelPlacement
from imgate_connector.records import ChannelCatalog, ChannelRecord
from imgate_connector.resources import ConnectorResources
from imgate_connector.settings import ConnectorSettings
from imgate_connector.status_publisher import StatusPublisher

log = structlog.get_logger()


class ChannelSupervisor:
    def __init__(
        self,
        settings: ConnectorSettings,
        nc: NATS,
        js: JetStreamContext,
        sessions: async_sessionmaker[AsyncSession],
        box: SecretBox,
        lease: ChannelLease,
        replicas: ReplicaSet,
        status: ChannelStatusStore,
        resources: ConnectorResources,
    ) -> None:
        self.settings = settings
        self._nc = nc
        self._lease = lease
        self._catalog = ChannelCatalog(sessions, box)
        self._status = StatusPublisher(lease, status, settings.status_interval_s)
        self._wiring = ChannelWiring(settings, js, lease, status, resources, self._status.due)
        self._held = HeldChannels(self._catalog, lease, self._wiring, status, self._status.due)
        self._placement = ChannelPlacement(settings, nc, self._catalog, self._held, lease, replicas)
        self._control = ControlHandler(nc, self._catalog, self._held, self._placement, self._status.due)

    @property
    def owner(self) -> str:
        return self._lease.owner

    @property
    def records(self) -> dict[int, ChannelRecord]:
        return self._catalog.records

    @property
    def running(self) -> dict[int, RunningChannel]:
        return self._held.running

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Serve control messages and keep leases, status and channels current until `stop`."""
        sub = await self._control.subscribe()
        try:
            await self.reconcile()
        except Exception as exc:  # the database is away: the periodic pass tries again
            log.warning("reconcile_failed", error=str(exc))
        if ready is not None:
            ready.set()
        loops = [
            asyncio.create_task(self._every(self.settings.reconcile_interval_s, self.reconcile)),
            asyncio.create_task(self._every(self.settings.lease_interval_s, self.tend)),
            asyncio.create_task(self._status.run(self._held)),
        ]
        try:
            await stop.wait()
        finally:
            self._held.stopping = True
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await self.shutdown()

    async def _every(self, interval: float, action: Callable[[], Awaitable[Any]]) -> None:
        # The stop flag ends the loop too: on Python 3.11 a wait_for inside a library (asyncpg,
        # nats-py) can swallow the cancellation, and this loop must not outlive the shutdown.
        while not self._held.stopping:
            try:
                await action()
            except Exception as exc:
                log.exception("periodic_task_failed", task=action.__name__, error=str(exc))
            if not self._held.stopping:
                await asyncio.sleep(interval)

    async def reconcile(self) -> None:
        """Apply what the database says to the channels running here; free ones are taken by
        `tend`."""
        records = await self._catalog.refresh()
        running = self._held.running
        for channel_id in list(running):
            record = records.get(channel_id)
            if record is None:
                await self._held.stop(channel_id, reason="deleted", forget_status=True)
            elif not record.spec.enabled:
                await self._held.stop(channel_id, reason="disabled", forget_status=True)
            elif record.fingerprint() != running[channel_id].record.fingerprint():
                await self._held.restart(record, reason="config changed")
        if not running and not self._lease.held():
            self._status.due()

    async def tend(self) -> None:
        """Renew leases (stopping channels whose lease is gone), then take free channels."""
        await self._placement.tend()

    async def control(self, request: ControlRequest) -> ControlReply | None:
        """Apply one control request; None when another replica should answer it."""
        return await self._control.handle(request)

    async def shutdown(self) -> None:
        """Stop every channel and release its lease so another replica takes over at once."""
        self._held.stopping = True
        await self._placement.leave()
        channels = await self._held.stop_all(drain_s=self.settings.stop_drain_s)
        for channel_id in channels:
            await self._placement.hint_handoff(channel_id)
        await self._wiring.close()
        with contextlib.suppress(Exception):
            await self._nc.flush(timeout=1)
