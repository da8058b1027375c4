"""Feishu's long connection: our own async connection loop around the SDK's frame models.

The SDK's `lark.ws.Client` runs its own event loop, posts with blocking `requests` and ACKs an
event when its handler returns; here the handshake and every API call go through httpx, the
websocket is kept up by the core's `SocketAdapter`, and an event is ACKed (its frame sent back
with `{"code":200}`) only once the bus confirmed it. Feishu redelivers an event not ACKed within
3 s (the same `event_id` and message, up to about 6 h later); the bus and the router drop the
repeats.

What is Feishu's own is here: the endpoint call, its ping frames (every `PingInterval`; a pong
may bring new client settings), payloads split into chunks, and whom to answer for a payload
that cannot be read.
"""

import asyncio
import json
import time
from typing import Any, ClassVar
from urllib.parse import parse_qs, quote, urlsplit

import structlog
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from imgate_common.errors import PlatformError
from imgate_common.messages import Attachment, InboundMessage, MessageKind, ReplyTarget
from imgate_common.platforms import Platform
from imgate_connector.platform_api import (
    AccessTokens,
    InboundFrame,
    MediaSource,
    SocketAdapter,
    app_scheduler,
)
from imgate_connector.platforms.feishu import frames
from imgate_connector.platforms.feishu.cards import CARD_CALLS, CardRecords, FeishuReplySurface
from imgate_connector.platforms.feishu.config import (
    MESSAGE_EVENT,
    TOO_MANY_CONNECTIONS,
    FeishuConfig,
    FeishuEnvironment,
    domain,
)
from imgate_connector.platforms.feishu.openapi import FeishuOpenApi, check
from imgate_connector.platforms.feishu.translate import TRANSLATORS, reply_target_of, translate

log = structlog.get_logger()

ENDPOINT_PATH = "/callback/ws/endpoint"
BOT_INFO_PATH = "/open-apis/bot/v3/info"
# Until the endpoint says otherwise (its `PingInterval`, seconds); the SDK's default.
PING_INTERVAL_S = 120.0
# A ping interval from the server outside this range is not taken as it is.
PING_BOUNDS_S = (5.0, 600.0)


def _envelope(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except RecursionError as exc:  # nested deeper than the parser recurses: no real event is
        raise ValueError("event nested too deep") from exc


def _event_type(envelope: Any) -> str | None:
    header = envelope.get("header") if isinstance(envelope, dict) else None
    value = header.get("event_type") if isinstance(header, dict) else None
    return value if isinstance(value, str) else None


class MessageEventFrame(InboundFrame):
    """An `im.message.receive_v1` event (its frames joined), as the inbound pipeline takes it."""

    def __init__(
        self, adapter: "FeishuAdapter", ws: ClientConnection, frame: Any, payload: bytes, frame_id: str
    ) -> None:
        super().__init__(frame_id)
        self._adapter = adapter
        self._ws = ws
        self._frame = frame
        self._payload = payload
        self._arrived = time.monotonic()
        self._envelope: Any = None

    def read(self) -> InboundMessage:
        self._envelope = envelope = _envelope(self._payload)
        if not isinstance(envelope, dict):
            raise ValueError("event is not an object")
        event = envelope.get("event")
        message = event.get("message") if isinstance(event, dict) else None
        kind = message.get("message_type") if isinstance(message, dict) else None
        self.msgtype = kind if isinstance(kind, str) and kind in TRANSLATORS else "other"
        return translate(envelope, self._adapter.spec.id, self._adapter.bot_open_id)

    async def ack(self, *, malformed: bool = False) -> bool:
        took_ms = int((time.monotonic() - self._arrived) * 1000)
        try:
            await self._ws.send(frames.ack(self._frame, took_ms))
        except websockets.ConnectionClosed:
            return False
        return True

    def sender(self) -> ReplyTarget | None:
        if self._envelope is None:
            try:
                self._envelope = _envelope(self._payload)
            except ValueError:
                return None
        return reply_target_of(self._envelope, self._adapter.spec.id)


class FeishuAdapter(SocketAdapter):
    name: ClassVar[str] = Platform.FEISHU
    environment: ClassVar[type[FeishuEnvironment]] = FeishuEnvironment
    # A frame carries a chunk of an event (Feishu splits big ones); 4 MB is far beyond any.
    max_frame_bytes: ClassVar[int] = 4 * 1024 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config = FeishuConfig.model_validate(self.spec.config)
        resources = self.resources
        self.api = FeishuOpenApi(
            resources.http,
            self.config,
            domain(self.config, self.environment()),
            resources.shared(AccessTokens),
        )
        scheduler = app_scheduler(resources, self.settings, f"feishu:{self.config.app_id}", CARD_CALLS)
        records = CardRecords(resources.redis, resources.redis_prefix, self.config.app_id)
        self._surface = FeishuReplySurface(self.api, records, scheduler, self.health, self.settings)
        self._log = log.bind(channel_id=self.spec.id, platform=self.name)
        self.ping_interval_s = PING_INTERVAL_S
        self.service_id = 0
        self.bot_open_id: str | None = None  # whose mention in a group is the bot's
        self.chunks = frames.Reassembly()

    @property
    def surface(self) -> FeishuReplySurface:
        return self._surface

    # -- connections ----------------------------------------------------------------------

    async def _open_link(self) -> str:
        body = {"AppID": self.config.app_id, "AppSecret": self.config.app_secret.get_secret_value()}
        try:
            response = await self.resources.http.post(
                f"{self.api.domain}{ENDPOINT_PATH}", json=body, headers={"locale": "zh"}
            )
        except Exception as exc:
            raise PlatformError(f"ws endpoint unreachable: {type(exc).__name__}: {exc}") from exc
        data = check(response).get("data") or {}
        url = data.get("URL") if isinstance(data, dict) else None
        if not isinstance(url, str) or not url:
            raise PlatformError("ws endpoint answered without a URL")
        self._configure(data.get("ClientConfig"))
        service = parse_qs(urlsplit(url).query).get("service_id", ["0"])[0]
        self.service_id = int(service) if service.isdigit() else 0
        if self.bot_open_id is None:
            await self._learn_bot()
        return url

    async def _learn_bot(self) -> None:
        """The bot's own open_id (to tell its mention in a group from others'); without it, a
        group message's leading mention is taken for the bot's."""
        try:
            data = await self.api.call("GET", BOT_INFO_PATH)
        except PlatformError as exc:
            self._log.warning("feishu_bot_info_failed", error=str(exc))
            return
        bot = data.get("bot")
        open_id = bot.get("open_id") if isinstance(bot, dict) else None
        self.bot_open_id = open_id if isinstance(open_id, str) and open_id else None

    def _configure(self, client_config: Any) -> None:
        """Client settings from the endpoint or a pong: of them we use the ping interval (our
        own back-off replaces the reconnect settings)."""
        if not isinstance(client_config, dict):
            return
        interval = client_config.get("PingInterval")
        if isinstance(interval, int | float) and not isinstance(interval, bool) and interval > 0:
            low, high = PING_BOUNDS_S
            self.ping_interval_s = min(high, max(low, float(interval)))

    async def _keep_alive(self, ws: ClientConnection) -> None:
        while True:
            await asyncio.sleep(self.ping_interval_s)
            try:
                await ws.send(frames.ping(self.service_id))
            except websockets.ConnectionClosed:
                return

    def _refused(self, exc: InvalidStatus) -> Exception:
        headers = exc.response.headers
        status, message = headers.get("handshake-status"), headers.get("handshake-msg")
        if status is None:
            return exc
        auth = headers.get("handshake-autherrcode")
        if auth is not None and auth.strip() == str(TOO_MANY_CONNECTIONS):
            text = f"too many connections: the app holds all Feishu allows ({message or auth})"
        else:
            text = f"connection refused: {status} {message or ''}".strip()
        return PlatformError(text, int(status) if status.isdigit() else None, auth)

    # -- frames ---------------------------------------------------------------------------

    async def _on_frame(self, ws: ClientConnection, raw: str | bytes, replace: asyncio.Event) -> None:
        if isinstance(raw, str):
            self._log.warning("frame_unparseable", size=len(raw), reason="text frame")
            return
        try:
            frame = frames.decode(raw)
        except ValueError as exc:
            self._log.warning("frame_unparseable", size=len(raw), error=str(exc)[:200])
            return
        kind = frames.header(frame, frames.TYPE)
        if frame.method == frames.CONTROL:
            if kind == frames.PONG and frame.payload:
                try:
                    self._configure(json.loads(frame.payload))
                except ValueError:
                    self._log.warning("pong_unparseable", size=len(frame.payload))
            return
        message_id = frames.header(frame, frames.MESSAGE_ID) or ""
        try:
            payload = self.chunks.add(
                message_id,
                _int(frames.header(frame, frames.SUM), 1),
                _int(frames.header(frame, frames.SEQ), 0),
                bytes(frame.payload),
            )
        except ValueError as exc:
            self._log.warning("frame_chunk_invalid", frame_id=message_id, error=str(exc))
            return
        if payload is None:
            return  # more parts to come
        try:
            if kind == frames.EVENT and self._is_message(payload):
                self.inbound.take(MessageEventFrame(self, ws, frame, payload, message_id))
            else:
                # Not ours (card callbacks, other events): ACK so it is not redelivered.
                self._log.info("frame_ignored", type=kind)
                await ws.send(frames.ack(frame, 0))
        except websockets.ConnectionClosed:
            self._log.warning("ack_not_sent_connection_closed", frame_id=message_id)

    def _is_message(self, payload: bytes) -> bool:
        """A message event, or a payload that cannot be read (the pipeline answers it)."""
        try:
            return _event_type(_envelope(payload)) in (MESSAGE_EVENT, None)
        except ValueError:
            return True

    # -- media ----------------------------------------------------------------------------

    async def _media_url(self, message: InboundMessage, attachment: Attachment) -> MediaSource:
        """The message's resource API: the file itself, to the app's tenant token."""
        assert attachment.download_code is not None
        kind = "image" if attachment.kind == MessageKind.IMAGE else "file"
        url = (
            f"{self.api.domain}/open-apis/im/v1/messages/{quote(message.message_id, safe='')}"
            f"/resources/{quote(attachment.download_code, safe='')}?type={kind}"
        )
        return MediaSource(url, {"Authorization": f"Bearer {await self.api.tenant_token()}"})


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


ADAPTER = FeishuAdapter
