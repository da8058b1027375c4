"""Where channels run: leases renewed, free channels taken, surplus handed over.

Every second a replica renews its leases, announces itself, and takes free channels it should
hold (the rendezvous-hash favourite at once, any replica after a grace period); now and then it
hands channels over to a replica that holds fewer than its share.
"""

import asyncio
import contextlib
import time

import structlog
from nats.aio.client import Client as NATS

from imgate_common.bus import control_subject
from imgate_common.messages import ControlAction, ControlRequest
from imgate_connector.channel import RunningChannel
from imgate_connector.holdings import HeldChannels
from imgate_connector.lease import ChannelLease, ReplicaSet
from imgate_connector.records import ChannelCatalog
from imgate_connector.settings import ConnectorSettings

log = structlog.get_logger()

# `requested_by` of the start request a replica sends when it lets a channel go.
HANDOFF = "handoff"


class ChannelPlacement:
    def __init__(
        self,
        settings: ConnectorSettings,
        nc: NATS,
        catalog: ChannelCatalog,
        held: HeldChannels,
        lease: ChannelLease,
        replicas: ReplicaSet,
    ) -> None:
        self._settings = settings
        self._nc = nc
        self._catalog = catalog
        self._held = held
        self._lease = lease
        self._replicas = replicas
        self._free_since: dict[int, float] = {}
        self._placement: dict[int, str] = {}  # where each enabled channel should run
        self._last_rebalance = time.monotonic()

    @property
    def owner(self) -> str:
        return self._lease.owner

    async def holder(self, channel_id: int) -> str | None:
        """The replica holding the channel's lease now, if any."""
        return await self._lease.holder(channel_id)

    async def tend(self) -> None:
        """Renew leases (stopping channels whose lease is gone), then take free channels."""
        try:
            lost = await self._lease.renew_all()
        except Exception as exc:
            log.warning("lease_renew_failed", error=str(exc))
            lost = []
        for channel_id in lost:
            log.warning("lease_lost", channel_id=channel_id)
            await self._held.stop(channel_id, reason="lease lost", release=False)
        for channel_id in list(self._held.running):
            if not self._lease.valid(channel_id):
                # Redis has not confirmed our lease for most of a TTL: another replica may take
                # the channel any moment, so we must let go first.
                log.warning("lease_unconfirmed", channel_id=channel_id)
                self._lease.forget(channel_id)
                await self._held.stop(channel_id, reason="lease unconfirmed", release=False)
        try:
            await self._replicas.beat()
            await self.claim_free()
        except Exception as exc:
            log.warning("channel_claim_failed", error=str(exc))
            return
        if time.monotonic() - self._last_rebalance >= self._settings.rebalance_interval_s:
            self._last_rebalance = time.monotonic()
            await self._rebalance()

    def placed_here(self, channel_id: int) -> bool:
        self._placement = self._replicas.place(self._catalog.enabled())
        return self._placement.get(channel_id, self.owner) == self.owner

    async def claim_free(self) -> None:
        enabled = self._catalog.enabled()
        self._placement = self._replicas.place(enabled)
        wanted = [c for c in enabled if c not in self._held.running]
        holders = await self._lease.holders(wanted)
        now = time.monotonic()
        for channel_id in wanted:
            if holders.get(channel_id) is not None:
                self._free_since.pop(channel_id, None)
                continue
            since = self._free_since.setdefault(channel_id, now)
            mine = self._placement.get(channel_id) == self.owner
            if mine or now - since >= self._settings.takeover_grace_s:
                await self._take(channel_id)

    async def take_for_control(self, channel_id: int) -> RunningChannel | None:
        """A start request everyone hears: the replica the channel hashes to takes it now, the
        others only if it is still free a moment later."""
        if await self.holder(channel_id) is not None:
            return None
        if not self.placed_here(channel_id):
            await asyncio.sleep(min(0.3, self._settings.takeover_grace_s))
            if await self.holder(channel_id) is not None:
                return None
        return await self._take(channel_id)

    async def _take(self, channel_id: int) -> RunningChannel | None:
        channel = await self._held.take(channel_id)
        self._free_since.pop(channel_id, None)  # taken, or held by another: free no longer
        return channel

    async def _rebalance(self) -> None:
        """Hold more than our share? Hand the surplus to the replicas the placement names, once
        they have been around long enough to be trusted with it."""
        running = self._held.running
        excess = len(running) - self._replicas.fair_share(len(self._catalog.enabled()))
        if excess <= 0:
            return
        now = time.monotonic()
        stable = {
            r
            for r, seen in self._replicas.first_seen.items()
            if r != self.owner and now - seen >= 2 * self._lease.ttl_s
        }
        # One per pass (`rebalance_interval_s` apart): each stop holds up this loop, which also
        # renews the leases of every other channel here.
        movable = [c for c in running if self._placement.get(c) in stable][:1]
        for channel_id in movable:
            log.info("channel_handoff", channel_id=channel_id, to=self._placement.get(channel_id))
            await self._held.stop(channel_id, reason="rebalance", drain_s=self._settings.stop_drain_s)
            await self.hint_handoff(channel_id)

    async def hint_handoff(self, channel_id: int) -> None:
        """Tell the other replicas a channel is free now, so one takes it without waiting."""
        request = ControlRequest(channel_id=channel_id, action=ControlAction.START, requested_by=HANDOFF)
        with contextlib.suppress(Exception):
            await self._nc.publish(control_subject(channel_id), request.model_dump_json().encode())

    async def leave(self) -> None:
        """Shutdown: the other replicas stop counting this one at once."""
        with contextlib.suppress(Exception):
            await self._replicas.leave()
