"""Pushes events over long connections and keeps Feishu's delivery promises: one random
connection per push, an ACK within the ACK wait or a redelivery on the schedule (same
event_id), queueing while nobody is connected, pongs to pings. Also where the connection
faults act: periodic disconnects, hard drops, half-dead sockets and duplicate pushes."""

import time

import structlog

from imsim.connections import ConnectionKeeper
from imsim.platforms.feishu import frames
from imsim.platforms.feishu import identifiers as feishu_ids
from imsim.platforms.feishu.faults import FaultConfig
from imsim.platforms.feishu.state import AckRecord, Connection, Delivery, FeishuApp, FeishuState, InboundEvent

log = structlog.get_logger(__name__)

# Close code of the server's periodic disconnects.
CLOSE_GOING_AWAY = 1001


class EventDispatcher(ConnectionKeeper[FeishuApp, Connection]):
    """Pushes events and reads what clients send; its timer loop disconnects and redelivers."""

    timer_name = "imsim-feishu-timers"

    def __init__(self, state: FeishuState, *, tick: float = 0.05) -> None:
        super().__init__(tick=tick)
        self._state = state

    # -- connections --------------------------------------------------------------------------

    @staticmethod
    def app_key(app: FeishuApp) -> str:
        return app.app_id

    async def attach(self, app: FeishuApp, connection: Connection) -> None:
        self.register(app, connection)
        await self._flush_queue(app)

    async def close(self, app: FeishuApp, connection: Connection, reason: str) -> bool:
        """The server closes the socket with a close frame (as Feishu does when it moves clients)."""
        if not connection.is_open:
            return False
        self.detach(app, connection, reason)
        if app.is_half_dead(connection):
            await connection.sink.abort()
        else:
            await connection.sink.close(CLOSE_GOING_AWAY, reason)
        return True

    def apply_fault_config(self, app: FeishuApp, previous: FaultConfig) -> None:
        self.retime_disconnects(app, previous.disconnect_every)

    # -- events ---------------------------------------------------------------------------------

    async def submit(self, app: FeishuApp, event: InboundEvent) -> bool:
        """Push a new event now, or queue it until a connection opens. True if pushed."""
        app.events[event.event_id] = event
        app.events_by_message[event.msg_id] = event.event_id
        app.counters.events += 1
        pushed = await self._push(app, event, kind="push") is not None
        rate = app.fault_config.duplicate_rate
        if pushed and rate and app.random.duplicate.random() < rate:
            await self._push(app, event, kind="duplicate")
        return pushed

    async def redeliver(self, app: FeishuApp, event: InboundEvent) -> Delivery | None:
        """Forced duplicate: push the event again now, ACKed or not. None without a connection."""
        return await self._push(app, event, kind="forced")

    async def _push(self, app: FeishuApp, event: InboundEvent, *, kind: str) -> Delivery | None:
        """kind: push (first), redelivery (no ACK in time), forced (asked for), duplicate (fault)."""
        counted = kind in ("push", "redelivery")
        while True:
            targets = app.open_connections()
            if not targets:
                if counted:
                    self._queue(app, event)
                return None
            connection = app.random.push.choice(targets)
            frame_id = feishu_ids.event_id()
            chunks = frames.data_frames(
                service=connection.service_id,
                message_id=frame_id,
                trace_id=feishu_ids.trace_id(),
                kind=frames.TYPE_EVENT,
                payload=event.payload,
                chunk_size=app.chunk_size,
            )
            delivery = Delivery(
                frame_id,
                event.event_id,
                connection.connection_id,
                bool(event.frame_ids),
                kind,
                frames=len(chunks),
            )
            # Recorded before sending: a fast client can ACK before the last send returns.
            app.deliveries.append(delivery)
            app.deliveries_by_frame[frame_id] = delivery
            event.frame_ids.append(frame_id)
            if event.first_pushed_at is None:
                event.first_pushed_at = delivery.at
            if counted:
                event.attempts += 1
                event.last_sent_at = time.monotonic()
                if event.status != "acked":
                    event.status = "sent"
                    app.in_flight.add(event.event_id)
            if app.is_half_dead(connection):
                delivery.swallowed = True
                connection.frames_lost += len(chunks)
                self._count_push(app, delivery)
                return delivery
            if await self._send_all(connection, chunks):
                self._count_push(app, delivery)
                log.info(
                    "feishu_event_pushed",
                    app_id=app.app_id,
                    event_id=event.event_id,
                    frame_id=frame_id,
                    connection_id=connection.connection_id,
                    kind=kind,
                    frames=len(chunks),
                )
                return delivery
            # The socket died under us: try another connection.
            app.deliveries.remove(delivery)
            del app.deliveries_by_frame[frame_id]
            event.frame_ids.remove(frame_id)
            if not event.frame_ids:
                event.first_pushed_at = None
            if counted:
                event.attempts -= 1
            self.detach(app, connection, "send_failed")

    @staticmethod
    def _count_push(app: FeishuApp, delivery: Delivery) -> None:
        counters = app.counters
        counters.pushes += 1
        counters.frames += delivery.frames
        if delivery.kind == "redelivery":
            counters.redeliveries += 1
        elif delivery.kind == "forced":
            counters.forced_duplicates += 1
        elif delivery.kind == "duplicate":
            counters.injected_duplicates += 1
        if delivery.swallowed:
            counters.swallowed += 1

    def _queue(self, app: FeishuApp, event: InboundEvent) -> None:
        app.in_flight.discard(event.event_id)
        if event.status != "acked":
            event.status = "queued"
        if event.event_id not in app.queued:
            app.queued.append(event.event_id)

    async def _flush_queue(self, app: FeishuApp) -> None:
        for _ in range(len(app.queued)):
            event_id = app.queued.popleft()
            event = app.events.get(event_id)
            if event is None or event.status == "acked":
                continue
            await self._push(app, event, kind="redelivery" if event.frame_ids else "push")

    @staticmethod
    async def _send_all(connection: Connection, chunks: list[bytes]) -> bool:
        for chunk in chunks:
            if not await connection.sink.send_bytes(chunk):
                return False
            connection.frames_sent += 1
        return True

    # -- what clients send ------------------------------------------------------------------------

    async def receive(self, app: FeishuApp, connection: Connection, data: bytes) -> None:
        if app.is_half_dead(connection):
            connection.frames_lost += 1
            return
        frame = frames.parse_client_frame(data)
        if frame is None:
            app.counters.unreadable_frames += 1
            log.warning("feishu_frame_unreadable", app_id=app.app_id, size=len(data))
            return
        if frame.method == frames.CONTROL and frame.type == frames.TYPE_PING:
            connection.pings += 1
            app.counters.pings += 1
            pong = frames.pong_frame(connection.service_id, app.client_config())
            if await connection.sink.send_bytes(pong):
                connection.frames_sent += 1
                app.counters.pongs += 1
            return
        if frame.method == frames.DATA:
            self._record_ack(app, connection, frame)
            return
        app.counters.unreadable_frames += 1

    def _record_ack(self, app: FeishuApp, connection: Connection, frame: frames.ClientFrame) -> None:
        code = frame.ack_code()
        biz_rt = frame.headers.get(frames.HEADER_BIZ_RT)
        delivery = app.deliveries_by_frame.get(frame.message_id or "")
        if delivery is None:
            app.counters.acks_unknown += 1
            app.acks.append(AckRecord(frame.message_id, None, code, False, biz_rt, connection.connection_id))
            return
        elapsed = time.monotonic() - delivery.sent_mono
        late = elapsed > app.ack_wait
        app.acks.append(
            AckRecord(delivery.frame_id, delivery.event_id, code, late, biz_rt, connection.connection_id)
        )
        if delivery.ack_latency_ms is None:
            delivery.ack_latency_ms = round(elapsed * 1000, 3)
            app.counters.ack_latencies_ms.append(delivery.ack_latency_ms)
        delivery.ack_code, delivery.biz_rt, delivery.late = code, biz_rt, late
        event = app.events.get(delivery.event_id)
        if code != 200:
            app.counters.acks_failed += 1
        elif late:
            app.counters.acks_late += 1  # Feishu stopped waiting: the event goes out again
        else:
            app.counters.acks_ok += 1
            delivery.acked = True
            if event is not None:
                event.status = "acked"
                app.in_flight.discard(event.event_id)
        log.info(
            "feishu_ack",
            app_id=app.app_id,
            event_id=delivery.event_id,
            code=code,
            late=late,
            connection_id=connection.connection_id,
        )

    # -- timers -------------------------------------------------------------------------------------

    async def run_due_timers(self) -> None:
        """One pass: periodic disconnects, then redeliveries due. Settings are read on every
        pass, so changes apply at once."""
        now = time.monotonic()
        for app in list(self._state.apps.values()):
            for connection in app.open_connections():
                if connection.rebalance_due is not None and now >= connection.rebalance_due:
                    if await self.close(app, connection, "rebalance"):
                        app.counters.periodic_disconnects += 1
            for event_id in list(app.in_flight):
                event = app.events.get(event_id)
                if event is None or event.status == "acked" or event.last_sent_at is None:
                    app.in_flight.discard(event_id)
                    continue
                waited = now - event.last_sent_at
                if waited < app.ack_wait:
                    continue
                retry = event.attempts - 1  # the retries done so far index the schedule
                if retry >= len(app.redeliver_schedule):
                    event.abandoned = True
                    app.in_flight.discard(event_id)
                    app.counters.abandoned += 1
                    log.info("feishu_event_abandoned", app_id=app.app_id, event_id=event_id)
                elif waited >= app.redeliver_schedule[retry]:
                    await self._push(app, event, kind="redelivery")
