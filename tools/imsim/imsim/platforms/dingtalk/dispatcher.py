"""Pushes frames to stream connections and keeps DingTalk's delivery promises: one random
connection per push, redelivery of what was not ACKed, queueing while nobody is connected,
pings and disconnects on a timer. Also where the stream faults act: periodic disconnects,
hard drops, half-dead sockets and forced duplicates."""

import json
import time

import structlog

from imsim import identifiers
from imsim.connections import ConnectionKeeper
from imsim.identifiers import now_ms
from imsim.platforms.dingtalk import frames
from imsim.platforms.dingtalk.faults import FaultConfig
from imsim.platforms.dingtalk.state import (
    AckRecord,
    Delivery,
    InboundMessage,
    PingRecord,
    SimApp,
    SimState,
    StreamConnection,
)

log = structlog.get_logger(__name__)

# Close code the server uses when it ends a connection after its disconnect grace.
CLOSE_AFTER_DISCONNECT = 1000


class StreamDispatcher(ConnectionKeeper[SimApp, StreamConnection]):
    """Pushes and reads frames; its timer loop closes, rebalances, pings and redelivers."""

    timer_name = "imsim-dingtalk-timers"

    def __init__(self, state: SimState, *, tick: float = 0.05) -> None:
        super().__init__(tick=tick)
        self._state = state

    # -- connections --------------------------------------------------------------------------

    @staticmethod
    def app_key(app: SimApp) -> str:
        return app.client_id

    async def attach(self, app: SimApp, connection: StreamConnection) -> None:
        self.register(app, connection)
        await self._flush_queue(app)

    def apply_fault_config(self, app: SimApp, previous: FaultConfig) -> None:
        self.retime_disconnects(app, previous.disconnect_every)

    async def send_disconnect(
        self, app: SimApp, connection: StreamConnection, reason: str, *, periodic: bool = False
    ) -> str | None:
        """SYSTEM disconnect: the client should reconnect; the server closes this socket after
        the app's disconnect grace. Returns the frame id, or None if the socket was gone."""
        if not connection.is_open or connection.disconnect_sent_at is not None:
            return None
        frame_id = identifiers.new_uuid()
        frame = frames.system_frame(frame_id=frame_id, topic=frames.TOPIC_DISCONNECT, data={"reason": reason})
        app.disconnect_frames[frame_id] = connection.connection_id
        connection.disconnect_sent_at = now_ms()
        connection.close_due = time.monotonic() + app.disconnect_grace
        connection.rebalance_due = None
        if not await self._send_system(app, connection, frame):
            self.detach(app, connection, "send_failed")
            return None
        app.counters.disconnects_sent += 1
        if periodic:
            app.counters.periodic_disconnects += 1
        log.info(
            "disconnect_sent",
            client_id=app.client_id,
            connection_id=connection.connection_id,
            reason=reason,
            periodic=periodic,
        )
        # Messages in flight on this socket are not moved: like DingTalk, imsim redelivers them
        # once redeliver_after passes without an ACK.
        return frame_id

    # -- messages -----------------------------------------------------------------------------

    async def submit(self, app: SimApp, message: InboundMessage) -> bool:
        """Push a new message now, or queue it until a connection opens. True if pushed."""
        app.messages[message.msg_id] = message
        app.counters.messages += 1
        return await self._push(app, message) is not None

    async def redeliver(self, app: SimApp, message: InboundMessage) -> Delivery | None:
        """Forced duplicate: push the message again now, with a new frame id and the same data,
        whether or not it was ACKed. None when no connection takes pushes."""
        return await self._push(app, message, forced=True)

    async def _push(self, app: SimApp, message: InboundMessage, *, forced: bool = False) -> Delivery | None:
        while True:
            targets = app.push_targets(message.topic)
            if not targets:
                if not forced:
                    self._queue(app, message)
                return None
            connection = app.random.push.choice(targets)
            redelivery = bool(message.frame_ids)
            frame_id = identifiers.new_uuid()
            frame = frames.callback_frame(
                app_id=app.app_id,
                connection_id=connection.connection_id,
                frame_id=frame_id,
                topic=message.topic,
                data=message.data,
            )
            # Record before sending: a fast client can ACK before send() returns.
            delivery = Delivery(frame_id, message.msg_id, connection.connection_id, redelivery, forced=forced)
            app.deliveries.append(delivery)
            app.deliveries_by_frame[frame_id] = delivery
            message.frame_ids.append(frame_id)
            if message.first_pushed_at is None:
                message.first_pushed_at = delivery.at
            if message.status != "acked":
                message.status = "sent"
                app.in_flight.add(message.msg_id)
            message.last_sent_at = time.monotonic()
            if app.is_half_dead(connection):
                # The server believes it pushed; the frame never reaches the client.
                delivery.swallowed = True
                connection.frames_lost += 1
                self._count_push(app, delivery)
                log.info(
                    "callback_swallowed",
                    client_id=app.client_id,
                    msg_id=message.msg_id,
                    frame_id=frame_id,
                    connection_id=connection.connection_id,
                )
                return delivery
            if await self._send(connection, frame):
                self._count_push(app, delivery)
                log.info(
                    "callback_pushed",
                    client_id=app.client_id,
                    msg_id=message.msg_id,
                    frame_id=frame_id,
                    connection_id=connection.connection_id,
                    redelivery=redelivery,
                    forced=forced,
                )
                return delivery
            # The socket died under us: this frame never left, try another connection.
            app.deliveries.remove(delivery)
            del app.deliveries_by_frame[frame_id]
            message.frame_ids.remove(frame_id)
            if not message.frame_ids:
                message.first_pushed_at = None
            self.detach(app, connection, "send_failed")

    @staticmethod
    def _count_push(app: SimApp, delivery: Delivery) -> None:
        app.counters.pushes += 1
        if delivery.forced:
            app.counters.forced_duplicates += 1
        elif delivery.redelivery:
            app.counters.redeliveries += 1
        if delivery.swallowed:
            app.counters.swallowed += 1

    def _queue(self, app: SimApp, message: InboundMessage) -> None:
        app.in_flight.discard(message.msg_id)
        if message.status != "acked":
            message.status = "queued"
        if message.msg_id not in app.queued:
            app.queued.append(message.msg_id)
            log.info("message_queued", client_id=app.client_id, msg_id=message.msg_id)

    async def _flush_queue(self, app: SimApp) -> None:
        for _ in range(len(app.queued)):
            msg_id = app.queued.popleft()
            message = app.messages.get(msg_id)
            if message is None or message.status == "acked":
                continue
            if not app.push_targets(message.topic):
                app.queued.append(msg_id)
                continue
            await self._push(app, message)

    # -- what clients send back -----------------------------------------------------------------

    def record_client_frame(self, app: SimApp, connection: StreamConnection, text: str) -> None:
        if app.is_half_dead(connection):
            connection.frames_lost += 1  # lost on the way: the server never reads it
            return
        ack = frames.parse_client_frame(text)
        if ack is None:
            log.warning(
                "client_frame_unparsable",
                client_id=app.client_id,
                connection_id=connection.connection_id,
                size=len(text),
            )
            app.acks.append(AckRecord(None, "unknown", None, None, None, text, connection.connection_id))
            app.counters.acks_by_kind["unknown"] += 1
            return
        kind, msg_id = "unknown", None
        if ack.frame_id in app.deliveries_by_frame:
            kind = "callback"
            delivery = app.deliveries_by_frame[ack.frame_id]
            msg_id = delivery.msg_id
            delivery.ack_code = ack.code
            if delivery.ack_latency_ms is None:
                delivery.ack_latency_ms = round((time.monotonic() - delivery.sent_mono) * 1000, 3)
                app.counters.ack_latencies_ms.append(delivery.ack_latency_ms)
            if ack.code == 200:
                app.counters.callback_acks_ok += 1
                delivery.acked = True
                message = app.messages[msg_id]
                message.status = "acked"
                app.in_flight.discard(msg_id)
        elif ack.frame_id in app.pings_by_frame:
            kind = "ping"
            ping = app.pings_by_frame[ack.frame_id]
            echoed = ack.data_object() or {}
            if not ping.acked:
                app.counters.pings_acked += 1
                if echoed.get("opaque") == ping.opaque:
                    app.counters.pings_echoed += 1
            ping.acked = True
            ping.ack_code = ack.code
            ping.echoed = echoed.get("opaque") == ping.opaque
        elif ack.frame_id in app.disconnect_frames:
            kind = "disconnect"
        app.counters.acks_by_kind[kind] += 1
        app.acks.append(
            AckRecord(ack.frame_id, kind, msg_id, ack.code, ack.message, ack.data, connection.connection_id)
        )
        log.info(
            "ack_received",
            client_id=app.client_id,
            kind=kind,
            frame_id=ack.frame_id,
            msg_id=msg_id,
            code=ack.code,
            connection_id=connection.connection_id,
        )

    # -- timers -------------------------------------------------------------------------------

    async def run_due_timers(self) -> None:
        """One pass: close connections past their grace, rebalance, ping, redeliver what is
        overdue. Intervals are read from the app on every pass, so PATCHed settings apply at once."""
        now = time.monotonic()
        for app in list(self._state.apps.values()):
            for connection in app.open_connections():
                if connection.close_due is not None and now >= connection.close_due:
                    if app.is_half_dead(connection):
                        await connection.sink.abort()  # no close frame gets through either
                    else:
                        await connection.sink.close(CLOSE_AFTER_DISCONNECT, "disconnect grace over")
                    self.detach(app, connection, "closed_after_disconnect")
                elif connection.disconnect_sent_at is not None:
                    continue
                elif connection.rebalance_due is not None and now >= connection.rebalance_due:
                    await self.send_disconnect(app, connection, "rebalance", periodic=True)
                elif not app.is_half_dead(connection) and now - connection.last_ping_at >= app.ping_interval:
                    await self._ping(app, connection)
            for msg_id in list(app.in_flight):
                if msg_id not in app.in_flight:  # ACKed while an earlier push was awaited
                    continue
                message = app.messages[msg_id]
                sent = message.last_sent_at
                if sent is not None and now - sent >= app.redeliver_after:
                    log.info("message_redelivering", client_id=app.client_id, msg_id=msg_id)
                    await self._push(app, message)

    async def _ping(self, app: SimApp, connection: StreamConnection) -> None:
        connection.last_ping_at = time.monotonic()
        frame_id = identifiers.new_uuid()
        opaque = identifiers.new_uuid()
        ping = PingRecord(frame_id, opaque, connection.connection_id)
        app.pings.append(ping)
        app.pings_by_frame[frame_id] = ping
        frame = frames.system_frame(frame_id=frame_id, topic=frames.TOPIC_PING, data={"opaque": opaque})
        if await self._send(connection, frame):
            app.counters.pings_sent += 1
        else:
            self.detach(app, connection, "send_failed")

    async def _send_system(self, app: SimApp, connection: StreamConnection, frame: dict[str, object]) -> bool:
        """Send, or lose the frame in a half-dead socket (the server cannot tell the difference)."""
        if app.is_half_dead(connection):
            connection.frames_lost += 1
            return True
        return await self._send(connection, frame)

    @staticmethod
    async def _send(connection: StreamConnection, frame: dict[str, object]) -> bool:
        sent = await connection.sink.send_text(json.dumps(frame, ensure_ascii=False))
        if sent:
            connection.frames_sent += 1
        return sent
