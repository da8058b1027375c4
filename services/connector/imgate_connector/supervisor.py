"""Which channels this replica runs: leases, spreading, reconciliation, control and status.

Every second a replica renews its leases, announces itself, and takes free channels it should
hold (the rendezvous-hash favourite at once, any replica after a grace period). Every few
seconds it compares its channels with the database, so a missed control message is not a lost
change, and hands channels over to a replica that holds fewer than its share. On shutdown it
releases its leases and tells the others, so they take over at once.
"""

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.bus import CONTROL_ALL, control_subject
from imgate_common.channels import ChannelSpec, channel_spec
from imgate_common.db.models import Channel
from imgate_common.messages import ChannelState, ControlAction, ControlReply, ControlRequest
from imgate_common.secrets import SecretBox
from imgate_common.status import ChannelStatusStore
from imgate_connector.health import ChannelHealth
from imgate_connector.inbound import InboundPublisher
from imgate_connector.lease import ChannelLease, ReplicaSet
from imgate_connector.ledger import FinalsOrder, ReplyLedger
from imgate_connector.mending import MendPolicy
from imgate_connector.platforms.base import PlatformAdapter
from imgate_connector.platforms.registry import ADAPTERS
from imgate_connector.rendering import CardRenderer
from imgate_connector.replies import ReplyConsumer, run_history
from imgate_connector.resources import ConnectorResources
from imgate_connector.settings import ConnectorSettings
from imgate_connector.wording import wording_for

log = structlog.get_logger()

# How long a control answer waits for a new connection to come up before reporting its state
# (admin-api waits 2 s for the answer).
CONNECT_WAIT_S = 1.5
HANDOFF = "handoff"


@dataclass(frozen=True)
class ChannelRecord:
    """A channel as the database describes it, with the knobs the connector applies."""

    spec: ChannelSpec
    card_qps: float | None = None
    language: str | None = None

    def fingerprint(self) -> tuple[Any, ...]:
        """What requires restarting the channel when it changes."""
        return (*self.spec.fingerprint(), self.card_qps, self.language)


def channel_record(row: Channel, box: SecretBox) -> ChannelRecord:
    qps = getattr(row, "card_qps", None)  # columns newer than some databases: read if present
    return ChannelRecord(
        channel_spec(row, box), float(qps) if qps else None, getattr(row, "language", None) or None
    )


async def load_records(
    sessions: async_sessionmaker[AsyncSession], box: SecretBox
) -> dict[int, ChannelRecord]:
    async with sessions() as session:
        rows = (await session.exec(select(Channel))).all()
    records = {}
    for row in rows:
        try:
            record = channel_record(row, box)
        except ValueError as exc:  # a secret no configured key decrypts: skip it, keep the rest
            log.error("channel_unreadable", channel_id=row.id, error=str(exc))
            continue
        records[record.spec.id] = record
    return records


@dataclass
class RunningChannel:
    record: ChannelRecord
    adapter: PlatformAdapter
    renderer: CardRenderer
    health: ChannelHealth
    replies: asyncio.Task[None]


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
        self._js = js
        self._sessions = sessions
        self._box = box
        self._lease = lease
        self._replicas = replicas
        self._status = status
        self._resources = resources
        self._publisher = InboundPublisher(
            js,
            settings.publish_timeout_s,
            settings.publish_retry_for_s,
            settings.publish_max_waiting_per_conversation,
        )
        self.records: dict[int, ChannelRecord] = {}
        self.running: dict[int, RunningChannel] = {}
        self._lock = asyncio.Lock()
        self._free_since: dict[int, float] = {}
        self._placement: dict[int, str] = {}  # where each enabled channel should run
        self._status_due = asyncio.Event()
        self._last_rebalance = time.monotonic()
        self._stopping = False

    @property
    def owner(self) -> str:
        return self._lease.owner

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Serve control messages and keep leases, status and channels current until `stop`."""
        sub = await self._nc.subscribe(CONTROL_ALL, cb=self._on_control)
        await self._nc.flush()
        try:
            await self.reconcile()
        except Exception as exc:  # the database is away: the periodic pass tries again
            log.warning("reconcile_failed", error=str(exc))
        if ready is not None:
            ready.set()
        loops = [
            asyncio.create_task(self._every(self.settings.reconcile_interval_s, self.reconcile)),
            asyncio.create_task(self._every(self.settings.lease_interval_s, self.tend)),
            asyncio.create_task(self._publish_status()),
        ]
        try:
            await stop.wait()
        finally:
            self._stopping = True
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await self.shutdown()

    async def _every(self, interval: float, action: Callable[[], Awaitable[Any]]) -> None:
        # The stop flag ends the loop too: on Python 3.11 a wait_for inside a library (asyncpg,
        # nats-py) can swallow the cancellation, and this loop must not outlive the shutdown.
        while not self._stopping:
            try:
                await action()
            except Exception as exc:
                log.exception("periodic_task_failed", task=action.__name__, error=str(exc))
            if not self._stopping:
                await asyncio.sleep(interval)

    # -- the database ---------------------------------------------------------------------

    async def reconcile(self) -> None:
        """Apply what the database says to the channels running here; free ones are taken by
        `tend`."""
        records = await load_records(self._sessions, self._box)
        self.records = records
        for channel_id in list(self.running):
            record = records.get(channel_id)
            if record is None:
                await self._stop(channel_id, reason="deleted", forget_status=True)
            elif not record.spec.enabled:
                await self._stop(channel_id, reason="disabled", forget_status=True)
            elif record.fingerprint() != self.running[channel_id].record.fingerprint():
                await self._restart(record, reason="config changed")
        if not self.running and not self._lease.held():
            self._status_due.set()

    # -- leases and spreading -------------------------------------------------------------

    async def tend(self) -> None:
        """Renew leases (stopping channels whose lease is gone), then take free channels."""
        try:
            lost = await self._lease.renew_all()
        except Exception as exc:
            log.warning("lease_renew_failed", error=str(exc))
            lost = []
        for channel_id in lost:
            log.warning("lease_lost", channel_id=channel_id)
            await self._stop(channel_id, reason="lease lost", release=False)
        for channel_id in list(self.running):
            if not self._lease.valid(channel_id):
                # Redis has not confirmed our lease for most of a TTL: another replica may take
                # the channel any moment, so we must let go first.
                log.warning("lease_unconfirmed", channel_id=channel_id)
                self._lease.forget(channel_id)
                await self._stop(channel_id, reason="lease unconfirmed", release=False)
        try:
            await self._replicas.beat()
            await self._claim_free()
        except Exception as exc:
            log.warning("channel_claim_failed", error=str(exc))
            return
        if time.monotonic() - self._last_rebalance >= self.settings.rebalance_interval_s:
            self._last_rebalance = time.monotonic()
            await self._rebalance()

    def _enabled(self) -> list[int]:
        return [c for c, r in self.records.items() if r.spec.enabled]

    def _placed_here(self, channel_id: int) -> bool:
        self._placement = self._replicas.place(self._enabled())
        return self._placement.get(channel_id, self.owner) == self.owner

    async def _claim_free(self) -> None:
        enabled = self._enabled()
        self._placement = self._replicas.place(enabled)
        wanted = [c for c in enabled if c not in self.running]
        holders = await self._lease.holders(wanted)
        now = time.monotonic()
        for channel_id in wanted:
            if holders.get(channel_id) is not None:
                self._free_since.pop(channel_id, None)
                continue
            since = self._free_since.setdefault(channel_id, now)
            mine = self._placement.get(channel_id) == self.owner
            if mine or now - since >= self.settings.takeover_grace_s:
                await self._take(channel_id)

    async def _take(self, channel_id: int) -> RunningChannel | None:
        async with self._lock:
            record = self.records.get(channel_id)
            if self._stopping or record is None or not record.spec.enabled:
                return None
            if channel_id in self.running:
                return self.running[channel_id]
            fence = await self._lease.acquire(channel_id)
            if fence is None:
                return None
            self._free_since.pop(channel_id, None)
            try:
                return await self._start(record, fence)
            except Exception as exc:
                await self._lease.release(channel_id)
                log.exception("channel_start_failed", channel_id=channel_id, error=str(exc))
                return None

    async def _rebalance(self) -> None:
        """Hold more than our share? Hand the surplus to the replicas the placement names, once
        they have been around long enough to be trusted with it."""
        enabled = self._enabled()
        excess = len(self.running) - self._replicas.fair_share(len(enabled))
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
        movable = [c for c in self.running if self._placement.get(c) in stable][:1]
        for channel_id in movable:
            log.info("channel_handoff", channel_id=channel_id, to=self._placement.get(channel_id))
            await self._stop(channel_id, reason="rebalance", drain_s=self.settings.stop_drain_s)
            await self._hint_handoff(channel_id)

    async def _hint_handoff(self, channel_id: int) -> None:
        """Tell the other replicas a channel is free now, so one takes it without waiting."""
        request = ControlRequest(channel_id=channel_id, action=ControlAction.START, requested_by=HANDOFF)
        with contextlib.suppress(Exception):
            await self._nc.publish(control_subject(channel_id), request.model_dump_json().encode())

    # -- one channel ----------------------------------------------------------------------

    async def _start(self, record: ChannelRecord, fence: int) -> RunningChannel:
        spec = record.spec
        adapter_cls = ADAPTERS.get(spec.platform)
        if adapter_cls is None:
            raise ValueError(f"no adapter for platform {spec.platform!r}")
        overrides: dict[str, Any] = {}
        if record.card_qps:
            overrides["card_qps"] = record.card_qps
        if record.language:
            overrides["language"] = record.language
        settings = self.settings.model_copy(update=overrides)
        health = ChannelHealth(channel_id=spec.id, owner=self.owner, on_change=self._status_due.set)
        adapter = adapter_cls(spec, settings, self._publisher, health, self._resources)
        # Every side effect of the channel (ACK, card call, ledger write) checks this holding.
        lease = self._lease.fenced(spec.id)
        adapter.fence = adapter.surface.fence = lease

        async def history(run_id: str) -> list[Any]:
            return await run_history(self._js, spec.id, run_id)

        renderer = CardRenderer(
            adapter.surface,
            health,
            settings.card_update_interval_s,
            ledger=ReplyLedger(self._resources.redis, self._resources.redis_prefix, lease),
            order=FinalsOrder(self._resources.redis, self._resources.redis_prefix, lease),
            history=history,
            wording=wording_for(settings.language),
            scope=spec.session_scope,
            final_order_wait_s=settings.final_order_wait_s,
            mend=MendPolicy(first_retry_s=settings.card_mend_first_s, retry_for_s=settings.card_mend_for_s),
        )
        adapter.on_accepted = renderer.accepted
        consumer = ReplyConsumer(
            self._js,
            spec.id,
            renderer,
            ack_wait_s=settings.reply_ack_wait_s,
            forget_idle_s=settings.run_idle_forget_s,
            status=self._status,
            poison_mark=settings.chaos_poison_reply_mark,
        )
        replies = asyncio.create_task(consumer.run(), name=f"replies-{spec.id}")
        await adapter.start()
        channel = RunningChannel(record, adapter, renderer, health, replies)
        self.running[spec.id] = channel
        self._status_due.set()
        log.info("channel_started", channel_id=spec.id, platform=spec.platform, fence=fence)
        return channel

    async def _restart(self, record: ChannelRecord, *, reason: str) -> RunningChannel | None:
        async with self._lock:
            await self._stop_locked(record.spec.id, reason=reason, release=False)
            fence = self._lease.fence(record.spec.id)
            if fence is None:
                return None
            return await self._start(record, fence)

    async def _stop(
        self,
        channel_id: int,
        *,
        reason: str,
        release: bool = True,
        forget_status: bool = False,
        drain_s: float = 0.0,
    ) -> bool:
        async with self._lock:
            return await self._stop_locked(
                channel_id, reason=reason, release=release, forget_status=forget_status, drain_s=drain_s
            )

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
        await channel.adapter.stop(drain_s)
        channel.replies.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await channel.replies
        await channel.renderer.close()
        channel.health.retire()
        if forget_status or release:
            with contextlib.suppress(Exception):
                await self._status.delete(channel_id)
        if release:
            with contextlib.suppress(Exception):
                await self._lease.release(channel_id)
        log.info("channel_stopped", channel_id=channel_id, reason=reason)
        return True

    # -- control --------------------------------------------------------------------------

    async def control(self, request: ControlRequest) -> ControlReply | None:
        """Apply one control request; None when another replica should answer it."""
        channel_id = request.channel_id
        if request.requested_by != HANDOFF:  # admin changes: read them; handoffs: nothing changed
            self.records = await load_records(self._sessions, self._box)
        record = self.records.get(channel_id)
        if request.action == ControlAction.STOP or record is None or not record.spec.enabled:
            stopped = await self._stop(channel_id, reason=request.action.value, forget_status=True)
            if not stopped and await self._lease.holder(channel_id) is not None:
                return None  # the owner answers
            return ControlReply(channel_id=channel_id, ok=True, state=ChannelState.DISABLED, owner=self.owner)
        running = self.running.get(channel_id)
        if running is not None:
            if request.action == ControlAction.RESTART:
                running = await self._restart(record, reason="restart requested")
            elif record.fingerprint() != running.record.fingerprint():
                running = await self._restart(record, reason="config changed")
        elif request.requested_by == HANDOFF:
            await self._claim_free()  # the usual placement rules, right away
            running = self.running.get(channel_id)
        else:
            running = await self._take_for_control(channel_id)
        if running is None:
            return None
        return await self._reply_when_settled(running)

    async def _take_for_control(self, channel_id: int) -> RunningChannel | None:
        """A start request everyone hears: the replica the channel hashes to takes it now, the
        others only if it is still free a moment later."""
        if await self._lease.holder(channel_id) is not None:
            return None
        if not self._placed_here(channel_id):
            await asyncio.sleep(min(0.3, self.settings.takeover_grace_s))
            if await self._lease.holder(channel_id) is not None:
                return None
        return await self._take(channel_id)

    async def _reply_when_settled(self, channel: RunningChannel) -> ControlReply:
        await channel.adapter.wait_connected(CONNECT_WAIT_S)
        self._status_due.set()
        return ControlReply(
            channel_id=channel.record.spec.id,
            ok=channel.health.state == ChannelState.CONNECTED,
            state=channel.health.state,
            error=channel.health.last_error,
            owner=self.owner,
        )

    async def _on_control(self, msg: Msg) -> None:
        try:
            request = ControlRequest.model_validate_json(msg.data)
        except ValidationError as exc:
            log.warning("control_invalid", subject=msg.subject, error=str(exc)[:300])
            return
        log.info(
            "control_received", channel_id=request.channel_id, action=request.action, by=request.requested_by
        )
        try:
            reply = await self.control(request)
        except Exception as exc:
            log.exception("control_failed", channel_id=request.channel_id, error=str(exc))
            reply = ControlReply(
                channel_id=request.channel_id, ok=False, state=ChannelState.DISCONNECTED, error=str(exc)
            )
        if reply is not None and msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(reply.model_dump_json().encode())

    # -- status ---------------------------------------------------------------------------

    async def _publish_status(self) -> None:
        """Each held channel's health, every few seconds and at once when a state changes."""
        while not self._stopping:  # not only cancellation (see `_every`)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._status_due.wait(), self.settings.status_interval_s)
            self._status_due.clear()
            for channel_id, channel in list(self.running.items()):
                if not self._lease.valid(channel_id):
                    continue  # never overwrite what the channel's new owner writes
                try:
                    await self._status.put(channel.health.snapshot())
                except Exception as exc:
                    log.warning("status_write_failed", channel_id=channel_id, error=str(exc))
                    break

    async def shutdown(self) -> None:
        """Stop every channel and release its lease so another replica takes over at once."""
        self._stopping = True
        with contextlib.suppress(Exception):
            await self._replicas.leave()
        async with self._lock:  # a start in progress finishes first, and none begins after
            channels = list(self.running)
            # All at once, so shutdown takes one drain period however many channels there are.
            await asyncio.gather(
                *(
                    self._stop_locked(c, reason="shutdown", drain_s=self.settings.stop_drain_s)
                    for c in channels
                ),
                return_exceptions=True,
            )
        for channel_id in channels:
            await self._hint_handoff(channel_id)
        await self._publisher.close()
        with contextlib.suppress(Exception):
            await self._nc.flush(timeout=1)
