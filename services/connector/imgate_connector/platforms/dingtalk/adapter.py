"""DingTalk Stream mode: our own async connection loop around the SDK's frame models.

Nothing here blocks the event loop: the gateway handshake and every OpenAPI call go through
httpx, the websocket is the `websockets` asyncio client, and the SDK contributes only its frame
classes. One connection is live at a time; on SYSTEM `disconnect` the next one opens first and
the old one drains (the server closes it ~10 s later). A watchdog replaces a socket that went
half-dead (no frame and no pong for `stale_after_s`), and failures back off exponentially with
jitter from `reconnect_min_s` to `reconnect_max_s`.

A bot message is ACKed only after the bus confirmed it; a message that cannot be read is ACKed
at once (redelivering it would fail the same way), counted, and answered when a person sent it.
"""

import asyncio
import contextlib
import json
import random
import socket
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import quote_plus

import structlog
import websockets
from dingtalk_stream.frames import AckMessage, CallbackMessage, Headers, SystemMessage
from dingtalk_stream.version import VERSION_STRING
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect

from imgate_common import telemetry
from imgate_common.errors import PlatformError
from imgate_common.messages import (
    Attachment,
    ConversationType,
    InboundMessage,
    ReplyTarget,
    run_id_for,
)
from imgate_common.platforms import DingTalkReplyData, Platform
from imgate_connector.lease import CALL_TIMEOUT_SHARE
from imgate_connector.media import MediaPolicy, fetch_attachments
from imgate_connector.metrics import ACK_SECONDS, DEDUP_HITS, INBOUND
from imgate_connector.platforms.base import InboundRejected, PlatformAdapter
from imgate_connector.platforms.dingtalk.cards import CARD_CALLS, DingTalkReplySurface
from imgate_connector.platforms.dingtalk.config import (
    BOT_MESSAGE_TOPIC,
    DingTalkConfig,
    openapi_endpoint,
)
from imgate_connector.platforms.dingtalk.openapi import DingTalkOpenApi, DingTalkTokens, check
from imgate_connector.platforms.dingtalk.translate import PLATFORM, TRANSLATORS, translate
from imgate_connector.scheduler import CardSchedulers
from imgate_connector.wording import wording_for

log = structlog.get_logger()

SYSTEM_PING = "ping"
SYSTEM_DISCONNECT = "disconnect"
# A connection that stayed up this long was healthy: its end does not count as a failure streak.
HEALTHY_AFTER_S = 30.0
# Frames up to 4 MB (DingTalk's bot messages are far smaller; anything bigger is not ours).
MAX_FRAME_BYTES = 4 * 1024 * 1024
# What a websocket close handshake may take when we stop: the design wants a channel down in 1 s.
CLOSE_TIMEOUT_S = 0.5


def ack_frame(
    message_id: str,
    code: int = AckMessage.STATUS_OK,
    message: str = "OK",
    data: dict[str, Any] | None = None,
) -> str:
    ack = AckMessage()
    ack.code = code
    ack.headers = Headers()
    ack.headers.message_id = message_id
    ack.headers.content_type = Headers.CONTENT_TYPE_APPLICATION_JSON
    ack.message = message
    ack.data = data or {}
    return json.dumps(ack.to_dict())


def _local_ip() -> str:
    # Informational only (DingTalk logs it); never reaches out: UDP connect sends nothing.
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("10.255.255.255", 1))
        return str(s.getsockname()[0])
    return "127.0.0.1"


def _frame_data(frame: dict[str, Any]) -> Any:
    """A frame's `data`: a JSON string in DingTalk's frames (parsed), or already an object."""
    data = frame.get("data")
    try:
        return json.loads(data) if isinstance(data, str | bytes) and data else data
    except RecursionError as exc:  # nested deeper than the parser recurses: no real payload is
        raise ValueError("frame data nested too deep") from exc


@dataclass
class _Taken:
    """What became of one bot message frame (metric labels)."""

    msgtype: str = "unknown"
    result: str = "failed"
    acked: bool = False


def _msgtype(data: dict[str, Any]) -> str:
    """The payload's message type as a label: known types only, so a sender can't grow the set."""
    value = data.get("msgtype")
    return value if isinstance(value, str) and value in TRANSLATORS else "other"


class HalfDead(PlatformError):
    """The socket stayed open but nothing came through it: no frame, no pong."""

    def __str__(self) -> str:
        return f"websocket half-dead: {self.args[0]}"


@dataclass
class LinkState:
    """One websocket's liveness as the watchdog sees it."""

    last_rx: float = field(default_factory=time.monotonic)
    last_ping: float = 0.0
    dead: str | None = None  # why the watchdog cut it

    def heard(self) -> None:
        self.last_rx = time.monotonic()

    def pong(self, waiter: "asyncio.Future[float]") -> None:
        if not waiter.cancelled() and waiter.exception() is None:
            self.heard()


class DingTalkAdapter(PlatformAdapter):
    name: ClassVar[str] = Platform.DINGTALK

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config = DingTalkConfig.model_validate(self.spec.config)
        http = self.resources.http
        self.api = DingTalkOpenApi(
            http,
            self.config,
            openapi_endpoint(self.config, self.settings.dingtalk_openapi_endpoint),
            self.resources.shared(DingTalkTokens),
        )
        # Card calls are budgeted per app: every channel of the app in this process shares one.
        scheduler = self.resources.shared(CardSchedulers).get(
            self.resources.redis,
            self.resources.redis_prefix,
            self.config.client_id,
            self.settings.card_qps,
            call_timeout_s=self.settings.lease_ttl_s * CALL_TIMEOUT_SHARE,
            card_calls=CARD_CALLS,
        )
        self._surface = DingTalkReplySurface(
            self.api, http, self.config, scheduler, self.health, self.settings
        )
        self._wording = wording_for(self.settings.language)
        self._log = log.bind(channel_id=self.spec.id, platform=self.name)
        self._supervisor: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._frames: set[asyncio.Task[None]] = set()
        self._sockets: set[ClientConnection] = set()
        self._draining: set[asyncio.Task[None]] = set()
        self._up = asyncio.Event()  # set while a websocket is open

    @property
    def surface(self) -> DingTalkReplySurface:
        return self._surface

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name=f"dingtalk-{self.spec.id}")

    async def stop(self, drain_s: float = 0.0) -> None:
        deadline = time.monotonic() + drain_s
        while self._frames and time.monotonic() < deadline:
            # Messages being published now are ACKed if the bus confirms them in time, and so
            # are those read meanwhile: a frame taken in is not left to the platform's redelivery.
            await asyncio.wait(set(self._frames), timeout=deadline - time.monotonic())
        tasks = [
            t for t in (self._supervisor, *self._connections, *self._frames, *self._draining) if t is not None
        ]
        for task in tasks:
            task.cancel()
        _, pending = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT_S * 1.5) if tasks else (set(), set())
        if pending:  # a close handshake that hangs (a half-dead peer): cut the sockets
            for ws in list(self._sockets):
                ws.transport.abort()
            await asyncio.wait(pending, timeout=0.2)
        self._supervisor = None
        self.health.disconnected()

    async def wait_connected(self, timeout_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._up.wait(), timeout_s)
        return self._up.is_set()

    # -- connections ----------------------------------------------------------------------

    async def _supervise(self) -> None:
        """Keep one live connection; on `disconnect` open the next before the old one drains."""
        failures = 0
        while True:
            replace = asyncio.Event()
            opened = time.monotonic()
            connection = asyncio.create_task(self._connection(replace), name=f"dingtalk-ws-{self.spec.id}")
            self._connections.add(connection)
            connection.add_done_callback(self._connections.discard)
            replaced = asyncio.create_task(replace.wait())
            done, _ = await asyncio.wait({connection, replaced}, return_when=asyncio.FIRST_COMPLETED)
            if replaced in done:
                # Server-initiated rebalancing: the next connection now, the old one drains.
                failures = 0
                self.health.reconnecting()
                drain = asyncio.create_task(self._drain(connection))
                self._draining.add(drain)
                drain.add_done_callback(self._draining.discard)
                continue
            replaced.cancel()
            error = connection.exception()
            if time.monotonic() - opened >= HEALTHY_AFTER_S:
                failures = 0
            failures += 1
            if error is not None:
                self.health.disconnected(f"{type(error).__name__}: {error}")
                self._log.warning("stream_connection_failed", error=str(error), failures=failures)
            else:
                self.health.disconnected()
            delay = self._backoff(failures)
            self._log.info("stream_reconnecting", in_s=round(delay, 2), failures=failures)
            await asyncio.sleep(delay)
            self.health.reconnecting()

    async def _drain(self, connection: asyncio.Task[None]) -> None:
        """Let a replaced connection finish what it has; the server closes it, or we do."""
        done, _ = await asyncio.wait({connection}, timeout=self.settings.drain_timeout_s)
        if not done:
            connection.cancel()

    def _backoff(self, failures: int) -> float:
        """Exponential with jitter: about min, 2·min, 4·min … up to max, each 50-100 %."""
        ceiling = min(self.settings.reconnect_max_s, self.settings.reconnect_min_s * 2 ** (failures - 1))
        return ceiling * random.uniform(0.5, 1.0)

    async def _open(self) -> str:
        body = {
            "clientId": self.config.client_id,
            "clientSecret": self.config.client_secret.get_secret_value(),
            "subscriptions": [{"type": "CALLBACK", "topic": BOT_MESSAGE_TOPIC}],
            "ua": f"imgate/0.1 dingtalk-stream/{VERSION_STRING}",
            "localIp": _local_ip(),
        }
        try:
            response = await self.resources.http.post(
                f"{self.api.endpoint}/v1.0/gateway/connections/open", json=body
            )
        except Exception as exc:
            raise PlatformError(f"connections/open unreachable: {type(exc).__name__}: {exc}") from exc
        data = check(response)
        return f"{data['endpoint']}?ticket={quote_plus(str(data['ticket']))}"

    async def _connection(self, replace: asyncio.Event) -> None:
        uri = await self._open()
        async with connect(
            uri,
            ping_interval=None,  # our watchdog pings, and decides what "dead" means
            close_timeout=CLOSE_TIMEOUT_S,
            max_size=MAX_FRAME_BYTES,
            open_timeout=self.settings.http_timeout_s,
            proxy=None,
        ) as ws:
            self._sockets.add(ws)
            link = LinkState()
            watchdog = asyncio.create_task(self._watchdog(ws, link))
            self.health.connected()
            self._up.set()
            self._log.info("stream_connected", reconnects=self.health.reconnects)
            try:
                async for raw in ws:
                    link.heard()
                    await self._on_frame(ws, raw, replace)
            except websockets.ConnectionClosedError as exc:
                if link.dead:
                    raise HalfDead(link.dead) from exc
                raise
            finally:
                watchdog.cancel()
                self._sockets.discard(ws)
                if not self._sockets:
                    self._up.clear()
                    self.health.disconnected()
                self._log.info("stream_closed", code=ws.close_code)

    async def _watchdog(self, ws: ClientConnection, link: LinkState) -> None:
        """Ping a quiet socket; cut one that answers neither frames nor pings (half-dead)."""
        ping_every = self.settings.ping_interval_s
        stale = self.settings.stale_after_s
        while True:
            await asyncio.sleep(min(1.0, ping_every / 2, stale / 4))
            now = time.monotonic()
            quiet = now - link.last_rx
            if quiet >= stale:
                self._log.warning("stream_half_dead", quiet_s=round(quiet, 1))
                link.dead = f"nothing heard for {quiet:.1f} s"
                ws.transport.abort()
                return
            if quiet >= ping_every and now - link.last_ping >= ping_every:
                link.last_ping = now
                try:
                    pong = await ws.ping()
                except websockets.ConnectionClosed:
                    return
                asyncio.ensure_future(pong).add_done_callback(link.pong)

    # -- frames ---------------------------------------------------------------------------

    async def _on_frame(self, ws: ClientConnection, raw: str | bytes, replace: asyncio.Event) -> None:
        try:
            frame = json.loads(raw)
            headers = frame.get("headers") or {}
            frame_type = frame.get("type")
            message_id = str(headers.get("messageId", ""))
            topic = headers.get("topic")
        except (ValueError, AttributeError, RecursionError):
            self._log.warning("frame_unparseable", size=len(raw))
            return
        try:
            if frame_type == SystemMessage.TYPE:
                await self._on_system(ws, frame, message_id, topic, replace)
            elif frame_type == CallbackMessage.TYPE and topic == BOT_MESSAGE_TOPIC:
                if len(self._frames) >= self.settings.max_frames_in_flight:
                    # No ACK: DingTalk redelivers it once we have caught up.
                    self._log.warning("frame_deferred_busy", frame_id=message_id)
                    return
                task = asyncio.create_task(self._on_bot_message(ws, frame, message_id))
                self._frames.add(task)
                task.add_done_callback(self._frames.discard)
            else:
                # Not ours (we subscribe to bot messages only): ACK so it is not redelivered.
                self._log.info("frame_ignored", type=frame_type, topic=topic)
                await ws.send(ack_frame(message_id, message="ignored"))
        except websockets.ConnectionClosed:
            self._log.warning("ack_not_sent_connection_closed", frame_id=message_id)

    async def _on_system(
        self,
        ws: ClientConnection,
        frame: dict[str, Any],
        message_id: str,
        topic: str | None,
        replace: asyncio.Event,
    ) -> None:
        try:
            data = _frame_data(frame)
        except ValueError:
            data = None
        # A ping's ACK echoes its data (the opaque) as it came.
        try:
            ack = ack_frame(message_id, data=data if isinstance(data, dict) else {})
        except RecursionError:  # parsed, but nested too deep to encode again: no real opaque is
            ack = ack_frame(message_id)
        await ws.send(ack)
        if topic == SYSTEM_DISCONNECT:
            reason = data.get("reason") if isinstance(data, dict) else None
            self._log.info("stream_disconnect_requested", reason=reason)
            replace.set()

    async def _on_bot_message(self, ws: ClientConnection, frame: dict[str, Any], frame_id: str) -> None:
        """One bot message: the root span of its trace, which every later step continues."""
        arrived = time.perf_counter()
        attributes: dict[str, str | int] = {
            telemetry.CHANNEL_ID: self.spec.id,
            telemetry.PLATFORM: PLATFORM,
            "imgate.frame_id": frame_id,
        }
        with (
            telemetry.tracer().start_as_current_span(
                "dingtalk.receive",
                context=Context(),  # a new trace, whatever task this runs in
                kind=SpanKind.CONSUMER,
                attributes=attributes,
                record_exception=False,
            ) as span,
            structlog.contextvars.bound_contextvars(channel_id=self.spec.id, frame_id=frame_id),
        ):
            outcome = _Taken()
            try:
                await self._take_bot_message(ws, frame, frame_id, span, outcome)
            finally:
                span.set_attribute("imgate.inbound.result", outcome.result)
                INBOUND.labels(PLATFORM, outcome.msgtype, outcome.result).inc()
                if outcome.acked:
                    ACK_SECONDS.labels(PLATFORM).observe(time.perf_counter() - arrived)

    async def _take_bot_message(
        self, ws: ClientConnection, frame: dict[str, Any], frame_id: str, span: Span, outcome: "_Taken"
    ) -> None:
        data: Any = None
        try:
            data = _frame_data(frame)
            if not isinstance(data, dict):
                raise ValueError("bot message data is not an object")
            outcome.msgtype = _msgtype(data)
            inbound = translate(data, self.spec.id, self.config.robot_code, (self.spec.name,))
        except (KeyError, ValueError, TypeError, ValidationError) as exc:
            outcome.result = "malformed"
            telemetry.fail(span, exc)
            outcome.acked = await self._malformed(ws, frame_id, data, exc)
            return
        span.set_attributes(
            {
                telemetry.MESSAGE_ID: inbound.message_id,
                telemetry.MESSAGE_TYPE: inbound.platform_type,
                telemetry.CONVERSATION_ID: inbound.target.conversation_id,
                telemetry.RUN_ID: run_id_for(inbound.platform, inbound.channel_id, inbound.message_id),
            }
        )
        telemetry.set_content(span, "imgate.message.text", inbound.text)
        structlog.contextvars.bind_contextvars(msg_id=inbound.message_id)
        inbound, media_skipped = await self._fetch_media(inbound)
        try:
            duplicate = await self.sink(inbound)
        except InboundRejected as exc:
            # The bus can never take it: ACK (a redelivery fails the same way) and tell the sender.
            outcome.result = "malformed"
            telemetry.fail(span, exc)
            outcome.acked = await self._malformed(ws, frame_id, data, exc)
            return
        except Exception as exc:
            # No ACK: DingTalk redelivers the message later, when the bus is back.
            outcome.result = "publish_failed"
            telemetry.fail(span, exc)
            self.health.publish_failures += 1
            self.health.error(f"bus publish failed: {type(exc).__name__}: {exc}")
            self._log.error("inbound_publish_failed", msg_id=inbound.message_id, error=str(exc))
            return
        if duplicate:
            outcome.result = "duplicate"
            span.add_event("dedup_hit")
            DEDUP_HITS.labels(PLATFORM).inc()
        else:
            outcome.result = "published"
        self.health.inbound()
        if self.fence is not None and not self.fence.valid():
            # Stored, but the channel is no longer ours to act on: no card, no ACK. The platform
            # redelivers it to the channel's new owner, and the bus drops the repeat.
            outcome.result = "lease_expired"
            self._log.warning("ack_withheld_lease_expired", frame_id=frame_id, msg_id=inbound.message_id)
            return
        # Before the ACK goes out (it never waits for this): the card must be known before any
        # reply event for the message can arrive.
        self.accepted(inbound)
        try:
            await ws.send(ack_frame(frame_id))
            outcome.acked = True
        except websockets.ConnectionClosed:
            # Stored already: the redelivery is dropped as a duplicate by the bus.
            self._log.warning("ack_not_sent_connection_closed", frame_id=frame_id)
        if media_skipped and not duplicate:
            await self._tell_media_skipped(inbound)

    async def _malformed(self, ws: ClientConnection, frame_id: str, data: Any, exc: Exception) -> bool:
        """ACK what can never be read (a redelivery would fail the same way), count it, and tell
        the person who sent it, when we know where they are. Whether the ACK went out."""
        self.health.messages_malformed += 1
        self.health.error(f"malformed bot message: {type(exc).__name__}: {exc}")
        self._log.warning("bot_message_malformed", frame_id=frame_id, error=str(exc)[:300])
        try:
            await ws.send(ack_frame(frame_id, message="malformed payload dropped"))
        except websockets.ConnectionClosed:
            # Not ACKed: DingTalk redelivers it, and that delivery tells the sender (not this one).
            self._log.warning("ack_not_sent_connection_closed", frame_id=frame_id)
            return False
        target = self._sender_of(data)
        if target is not None:
            try:
                await self._surface.send_text(target, self._wording.unreadable)
            except Exception as send_exc:
                self._log.warning("malformed_reply_failed", error=str(send_exc))
        return True

    def _sender_of(self, data: Any) -> ReplyTarget | None:
        """Where to answer a payload we could not translate, if a person (not a system) sent it."""
        if not isinstance(data, dict):
            return None
        staff_id = data.get("senderStaffId") or None
        sender = staff_id or data.get("senderId")
        webhook = data.get("sessionWebhook")
        if not isinstance(sender, str) or not sender or not (isinstance(webhook, str) or staff_id):
            return None
        try:
            return ReplyTarget(
                platform=PLATFORM,
                channel_id=self.spec.id,
                conversation_id=str(data.get("conversationId") or ""),
                conversation_type=(
                    ConversationType.GROUP
                    if str(data.get("conversationType")) == "2"
                    else ConversationType.SINGLE
                ),
                sender_id=sender,
                sender_employee_id=staff_id if isinstance(staff_id, str) else None,
                platform_data=DingTalkReplyData(
                    robot_code=data.get("robotCode") or self.config.robot_code,
                    session_webhook=webhook if isinstance(webhook, str) else None,
                ),
                inbound_message_id=str(data.get("msgId") or ""),
            )
        except ValidationError:
            return None

    # -- media ----------------------------------------------------------------------------

    async def _fetch_media(self, message: InboundMessage) -> tuple[InboundMessage, bool]:
        """Fetch what the channel's agent can use (media.py); whether any picture was skipped
        for a full media bucket."""
        vision = self.resources.vision
        policy = MediaPolicy(
            timeout_s=self.settings.media_timeout_s,
            inline_text_max_bytes=self.settings.media_inline_text_max_bytes,
            images_wanted=vision is None or await vision.supports_images(self.spec.default_agent_id),
        )
        robot_code = (
            message.target.data_as(DingTalkReplyData).robot_code
            or self.config.robot_code
            or self.config.client_id
        )

        async def download_url(attachment: Attachment) -> str:
            assert attachment.download_code is not None
            return await self.api.download_url(robot_code, attachment.download_code)

        run_id = run_id_for(message.platform, message.channel_id, message.message_id)
        return await fetch_attachments(
            message,
            self.resources.media,
            self.resources.http,
            download_url,
            policy,
            f"{PLATFORM}/{self.spec.id}/{run_id}",
        )

    async def _tell_media_skipped(self, message: InboundMessage) -> None:
        """One sentence to the sender: a file of theirs was not taken (the text was)."""
        try:
            await self._surface.send_text(message.target, self._wording.media_skipped)
        except Exception as exc:
            self._log.warning("media_skipped_reply_failed", error=str(exc)[:200])
