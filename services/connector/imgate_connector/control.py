"""`channel.control.*`: start, stop, restart and reload requests, answered by the channel's owner."""

import contextlib
from collections.abc import Callable

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from imgate_common.bus import CONTROL_ALL
from imgate_common.messages import ChannelState, ControlAction, ControlReply, ControlRequest
from imgate_connector.channel import RunningChannel
from imgate_connector.holdings import HeldChannels
from imgate_connector.placement import HANDOFF, ChannelPlacement
from imgate_connector.records import ChannelCatalog

log = structlog.get_logger()

# How long a control answer waits for a new connection to come up before reporting its state
# (admin-api waits 2 s for the answer).
CONNECT_WAIT_S = 1.5


class ControlHandler:
    def __init__(
        self,
        nc: NATS,
        catalog: ChannelCatalog,
        held: HeldChannels,
        placement: ChannelPlacement,
        on_change: Callable[[], None],
    ) -> None:
        self._nc = nc
        self._catalog = catalog
        self._held = held
        self._placement = placement
        self._on_change = on_change

    async def subscribe(self) -> Subscription:
        """Hear every channel's control requests (from here on, once the server confirmed)."""
        sub = await self._nc.subscribe(CONTROL_ALL, cb=self._on_message)
        await self._nc.flush()
        return sub

    async def handle(self, request: ControlRequest) -> ControlReply | None:
        """Apply one control request; None when another replica should answer it."""
        channel_id = request.channel_id
        if request.requested_by != HANDOFF:  # admin changes: read them; handoffs: nothing changed
            await self._catalog.refresh()
        record = self._catalog.get(channel_id)
        owner = self._placement.owner
        if request.action == ControlAction.STOP or record is None or not record.spec.enabled:
            stopped = await self._held.stop(channel_id, reason=request.action.value, forget_status=True)
            if not stopped and await self._placement.holder(channel_id) is not None:
                return None  # the owner answers
            return ControlReply(channel_id=channel_id, ok=True, state=ChannelState.DISABLED, owner=owner)
        running = self._held.running.get(channel_id)
        if running is not None:
            if request.action == ControlAction.RESTART:
                running = await self._held.restart(record, reason="restart requested")
            elif record.fingerprint() != running.record.fingerprint():
                running = await self._held.restart(record, reason="config changed")
        elif request.requested_by == HANDOFF:
            await self._placement.claim_free()  # the usual placement rules, right away
            running = self._held.running.get(channel_id)
        else:
            running = await self._placement.take_for_control(channel_id)
        if running is None:
            return None
        return await self._reply_when_settled(running)

    async def _reply_when_settled(self, channel: RunningChannel) -> ControlReply:
        await channel.adapter.wait_connected(CONNECT_WAIT_S)
        self._on_change()
        return ControlReply(
            channel_id=channel.record.spec.id,
            ok=channel.health.state == ChannelState.CONNECTED,
            state=channel.health.state,
            error=channel.health.last_error,
            owner=self._placement.owner,
        )

    async def _on_message(self, msg: Msg) -> None:
        try:
            request = ControlRequest.model_validate_json(msg.data)
        except ValidationError as exc:
            log.warning("control_invalid", subject=msg.subject, error=str(exc)[:300])
            return
        log.info(
            "control_received", channel_id=request.channel_id, action=request.action, by=request.requested_by
        )
        try:
            reply = await self.handle(request)
        except Exception as exc:
            log.exception("control_failed", channel_id=request.channel_id, error=str(exc))
            reply = ControlReply(
                channel_id=request.channel_id, ok=False, state=ChannelState.DISCONNECTED, error=str(exc)
            )
        if reply is not None and msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(reply.model_dump_json().encode())
