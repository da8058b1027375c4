"""Pushes frames to stream connections and keeps DingTalk's delivery promises: one random
connection per push, redelivery of what was not ACKed, queueing while nobody is connected,
pings and disconnects on a timer."""

import asyncio
import contextlib
import json
import random
import time
from types import TracebackType

import structlog

from imsim import frames, identifiers
from imsim.identifiers import now_ms
from imsim.state import (
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


class StreamDispatcher:
    """Owns the timer loop; an async context manager started in the app's lifespan."""

    def __init__(self, state: SimState, *, tick: float = 0.05) -> None:
        self._state = state
        self._tick = tick
        self._timer_task: asyncio.Task[None] | None = None
        self._random = random.Random()

    async def __aenter__(self) -> "StreamDispatcher":
        self._timer_task = asyncio.create_task(self._run_timers(), name="imsim-timers")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._timer_task is not None:
            self._timer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer_task
            self._timer_task = None

    # -- connections --------------------------------------------------------------------------

    async def attach(self, app: SimApp, connection: StreamConnection) -> None:
        app.connections[connection.connection_id] = connection
        log.info(
            "connection_opened",
            client_id=app.client_id,
            connection_id=connection.connection_id,
            open=len(app.open_connections()),
        )
        await self._flush_queue(app)

    def detach(self, app: SimApp, connection: StreamConnection, reason: str) -> None:
        if not connection.is_open:
            return
        connection.closed_at = now_ms()
        connection.close_reason = reason
        log.info(
            "connection_closed",
            client_id=app.client_id,
            connection_id=connection.connection_id,
            reason=reason,
        )

    async def send_disconnect(self, app: SimApp, connection: StreamConnection, reason: str) -> str | None:
        """SYSTEM disconnect: the client should reconnect; the server closes this socket after
        the app's disconnect grace. Returns the frame id, or None if the socket was gone."""
        if not connection.is_open or connection.disconnect_sent_at is not None:
            return None
        frame_id = identifiers.new_uuid()
        frame = frames.system_frame(frame_id=frame_id, topic=frames.TOPIC_DISCONNECT, data={"reason": reason})
        app.disconnect_frames[frame_id] = connection.connection_id
        connection.disconnect_sent_at = now_ms()
        connection.close_due = time.monotonic() + app.disconnect_grace
        if not await self._send(connection, frame):
            self.detach(app, connection, "send_failed")
            return None
        log.info(
            "disconnect_sent", client_id=app.client_id, connection_id=connection.connection_id, reason=reason
        )
        # Messages in flight on this socket are not moved: like DingTalk, imsim redelivers them
        # once redeliver_after passes without an ACK.
        return frame_id

    # -- messages -----------------------------------------------------------------------------

    async def submit(self, app: SimApp, message: InboundMessage) -> bool:
        """Push a new message now, or queue it until a connection opens. True if pushed."""
        app.messages[message.msg_id] = message
        return await self._push(app, message)

    async def _push(self, app: SimApp, message: InboundMessage) -> bool:
        while True:
            targets = app.push_targets(message.topic)
            if not targets:
                self._queue(app, message)
                return False
            connection = self._random.choice(targets)
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
            delivery = Delivery(frame_id, message.msg_id, connection.connection_id, redelivery)
            app.deliveries.append(delivery)
            app.deliveries_by_frame[frame_id] = delivery
            message.frame_ids.append(frame_id)
            if message.status != "acked":
                message.status = "sent"
                app.in_flight.add(message.msg_id)
            message.last_sent_at = time.monotonic()
            if await self._send(connection, frame):
                log.info(
                    "callback_pushed",
                    client_id=app.client_id,
                    msg_id=message.msg_id,
                    frame_id=frame_id,
                    connection_id=connection.connection_id,
                    redelivery=redelivery,
                )
                return True
            # The socket died under us: this frame never left, try another connection.
            app.deliveries.remove(delivery)
            del app.deliveries_by_frame[frame_id]
            message.frame_ids.remove(frame_id)
            self.detach(app, connection, "send_failed")

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
            message = app.messages[msg_id]
            if message.status == "acked":
                continue
            if not app.push_targets(message.topic):
                app.queued.append(msg_id)
                continue
            await self._push(app, message)

    # -- what clients send back -----------------------------------------------------------------

    def record_client_frame(self, app: SimApp, connection: StreamConnection, text: str) -> None:
        ack = frames.parse_client_frame(text)
        if ack is None:
            log.warning(
                "client_frame_unparsable",
                client_id=app.client_id,
                connection_id=connection.connection_id,
                size=len(text),
            )
            app.acks.append(AckRecord(None, "unknown", None, None, None, text, connection.connection_id))
            return
        kind, msg_id = "unknown", None
        if ack.frame_id in app.deliveries_by_frame:
            kind = "callback"
            delivery = app.deliveries_by_frame[ack.frame_id]
            msg_id = delivery.msg_id
            delivery.ack_code = ack.code
            if ack.code == 200:
                delivery.acked = True
                message = app.messages[msg_id]
                message.status = "acked"
                app.in_flight.discard(msg_id)
        elif ack.frame_id in app.pings_by_frame:
            kind = "ping"
            ping = app.pings_by_frame[ack.frame_id]
            ping.acked = True
            ping.ack_code = ack.code
            echoed = ack.data_object() or {}
            ping.echoed = echoed.get("opaque") == ping.opaque
        elif ack.frame_id in app.disconnect_frames:
            kind = "disconnect"
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

    async def _run_timers(self) -> None:
        while True:
            try:
                await self.run_due_timers()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("timer_pass_failed")
            await asyncio.sleep(self._tick)

    async def run_due_timers(self) -> None:
        """One pass: close connections past their grace, ping, redeliver what is overdue.
        Intervals are read from the app on every pass, so PATCHed settings apply at once."""
        now = time.monotonic()
        for app in list(self._state.apps.values()):
            for connection in app.open_connections():
                if connection.close_due is not None and now >= connection.close_due:
                    await connection.sink.close(CLOSE_AFTER_DISCONNECT, "disconnect grace over")
                    self.detach(app, connection, "closed_after_disconnect")
                elif (
                    connection.disconnect_sent_at is None
                    and now - connection.last_ping_at >= app.ping_interval
                ):
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
        if not await self._send(connection, frame):
            self.detach(app, connection, "send_failed")

    @staticmethod
    async def _send(connection: StreamConnection, frame: dict[str, object]) -> bool:
        sent = await connection.sink.send_text(json.dumps(frame, ensure_ascii=False))
        if sent:
            connection.frames_sent += 1
        return sent
