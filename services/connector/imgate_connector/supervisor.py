"""Which channels this replica runs: leases, reconciliation with the database, control messages."""

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.bus import CONTROL_ALL
from imgate_common.channels import ChannelSpec, load_channel, load_channels
from imgate_common.messages import (
    ChannelState,
    ControlAction,
    ControlReply,
    ControlRequest,
)
from imgate_common.secrets import SecretBox
from imgate_common.status import ChannelStatusStore
from imgate_connector.health import ChannelHealth
from imgate_connector.inbound import InboundPublisher
from imgate_connector.lease import ChannelLease
from imgate_connector.platforms.base import PlatformAdapter
from imgate_connector.platforms.registry import ADAPTERS
from imgate_connector.rendering import CardRenderer
from imgate_connector.replies import consume_replies
from imgate_connector.settings import ConnectorSettings

log = structlog.get_logger()

# How long a control answer waits for a new connection to come up before reporting its state.
CONNECT_WAIT_S = 1.5


@dataclass
class RunningChannel:
    spec: ChannelSpec
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
        status: ChannelStatusStore,
        http: httpx.AsyncClient,
    ) -> None:
        self.settings = settings
        self._nc = nc
        self._js = js
        self._sessions = sessions
        self._box = box
        self._lease = lease
        self._status = status
        self._http = http
        self._publisher = InboundPublisher(js, settings.publish_timeout_s)
        self.running: dict[int, RunningChannel] = {}
        self._lock = asyncio.Lock()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve control messages and keep leases, status and channels current until `stop`."""
        sub = await self._nc.subscribe(CONTROL_ALL, cb=self._on_control)
        loops = [
            asyncio.create_task(self._every(self.settings.reconcile_interval_s, self.reconcile)),
            asyncio.create_task(self._every(self.settings.status_interval_s, self.heartbeat)),
        ]
        try:
            await stop.wait()
        finally:
            await sub.unsubscribe()
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await self.shutdown()

    async def _every(self, interval: float, action: Callable[[], Any]) -> None:
        while True:
            try:
                await action()
            except Exception as exc:
                log.exception("periodic_task_failed", task=action.__name__, error=str(exc))
            await asyncio.sleep(interval)

    async def reconcile(self) -> None:
        async with self._sessions() as session:
            specs = {spec.id: spec for spec in await load_channels(session, self._box)}
        for channel_id in list(self.running):
            if channel_id not in specs:
                await self._stop(channel_id, reason="deleted")
        for spec in specs.values():
            await self.apply(spec, settle=False)

    async def heartbeat(self) -> None:
        for channel_id, channel in list(self.running.items()):
            if not await self._lease.renew(channel_id):
                log.warning("lease_lost", channel_id=channel_id)
                async with self._lock:
                    await self._stop(channel_id, reason="lease lost", release=False)
                continue
            await self._status.put(channel.health.snapshot())

    async def apply(
        self, spec: ChannelSpec, *, restart: bool = False, settle: bool = True
    ) -> ControlReply | None:
        """Bring one channel to what its spec says; None when another replica owns it."""
        async with self._lock:
            current = self.running.get(spec.id)
            if not spec.enabled:
                if current:
                    await self._stop(spec.id, reason="disabled")
                await self._status.delete(spec.id)
                return ControlReply(channel_id=spec.id, ok=True, state=ChannelState.DISABLED)
            if current and (restart or current.spec.fingerprint() != spec.fingerprint()):
                await self._stop(spec.id, reason="restart" if restart else "config changed", release=False)
                current = None
            if current is None:
                if await self._lease.acquire(spec.id) is None:
                    return None
                try:
                    current = await self._start(spec)
                except Exception as exc:
                    await self._lease.release(spec.id)
                    log.error("channel_start_failed", channel_id=spec.id, error=str(exc))
                    return ControlReply(
                        channel_id=spec.id, ok=False, state=ChannelState.DISCONNECTED, error=str(exc)
                    )
            current.spec = spec
        if not settle:
            return None
        return await self._reply_when_settled(current)

    async def _start(self, spec: ChannelSpec) -> RunningChannel:
        adapter_cls = ADAPTERS.get(spec.platform)
        if adapter_cls is None:
            raise ValueError(f"no adapter for platform {spec.platform!r}")
        health = ChannelHealth(channel_id=spec.id, owner=self._lease.owner)
        adapter = adapter_cls(spec, self.settings, self._publisher, health, self._http)
        renderer = CardRenderer(adapter.surface, health, self.settings.card_update_interval_s)
        await adapter.start()
        replies = asyncio.create_task(consume_replies(self._js, spec.id, renderer))
        channel = RunningChannel(spec, adapter, renderer, health, replies)
        self.running[spec.id] = channel
        await self._status.put(health.snapshot())
        log.info("channel_started", channel_id=spec.id, platform=spec.platform)
        return channel

    async def _stop(self, channel_id: int, *, reason: str, release: bool = True) -> None:
        channel = self.running.pop(channel_id, None)
        if channel is None:
            return
        channel.replies.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await channel.replies
        await channel.adapter.stop()
        await channel.renderer.close()
        await self._status.delete(channel_id)
        if release:
            await self._lease.release(channel_id)
        log.info("channel_stopped", channel_id=channel_id, reason=reason)

    async def _reply_when_settled(self, channel: RunningChannel) -> ControlReply:
        deadline = asyncio.get_running_loop().time() + CONNECT_WAIT_S
        while channel.health.state != ChannelState.CONNECTED:
            if asyncio.get_running_loop().time() >= deadline:
                break
            await asyncio.sleep(0.05)
        await self._status.put(channel.health.snapshot())
        return ControlReply(
            channel_id=channel.spec.id,
            ok=channel.health.state == ChannelState.CONNECTED,
            state=channel.health.state,
            error=channel.health.last_error,
            owner=self._lease.owner,
        )

    async def control(self, request: ControlRequest) -> ControlReply | None:
        async with self._sessions() as session:
            spec = await load_channel(session, self._box, request.channel_id)
        if spec is None or request.action == ControlAction.STOP:
            was_running = request.channel_id in self.running
            async with self._lock:
                await self._stop(request.channel_id, reason=request.action.value)
            if spec is None and not was_running:
                return None
            return ControlReply(channel_id=request.channel_id, ok=True, state=ChannelState.DISABLED)
        return await self.apply(spec, restart=request.action == ControlAction.RESTART)

    async def _on_control(self, msg: Msg) -> None:
        try:
            request = ControlRequest.model_validate_json(msg.data)
        except ValidationError as exc:
            log.warning("control_invalid", subject=msg.subject, error=str(exc)[:300])
            return
        log.info("control_received", channel_id=request.channel_id, action=request.action)
        try:
            reply = await self.control(request)
        except Exception as exc:
            log.exception("control_failed", channel_id=request.channel_id, error=str(exc))
            reply = ControlReply(
                channel_id=request.channel_id, ok=False, state=ChannelState.DISCONNECTED, error=str(exc)
            )
        if reply is not None and msg.reply:
            await msg.respond(reply.model_dump_json().encode())

    async def shutdown(self) -> None:
        """Stop every channel and release its lease so another replica takes over at once."""
        async with self._lock:
            for channel_id in list(self.running):
                await self._stop(channel_id, reason="shutdown")
