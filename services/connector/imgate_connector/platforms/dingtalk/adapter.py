"""DingTalk Stream mode: our own async connection loop around the SDK's frame models.

Nothing here blocks the event loop: the gateway handshake and every OpenAPI call go through
httpx, the websocket is the `websockets` asyncio client (kept up by the core's
`SocketAdapter`), and the SDK contributes only its frame classes. On SYSTEM `disconnect` the
next connection opens first and the old one drains (the server closes it ~10 s later).

Bot messages go through the core's `InboundPipeline` (ACKed only after the bus confirmed them);
what is DingTalk's own is here: its frames, the ACK frame, and whom to answer for a payload that
cannot be read.
"""

import asyncio
import contextlib
import json
import socket
from typing import Any, ClassVar
from urllib.parse import quote_plus

import structlog
import websockets
from dingtalk_stream.frames import AckMessage, CallbackMessage, Headers, SystemMessage
from dingtalk_stream.version import VERSION_STRING
from websockets.asyncio.client import ClientConnection

from imgate_common.errors import PlatformError
from imgate_common.messages import Attachment, InboundMessage, ReplyTarget
from imgate_common.platforms import DingTalkReplyData, Platform
from imgate_connector.platform_api import (
    AccessTokens,
    InboundFrame,
    SocketAdapter,
    app_scheduler,
)
from imgate_connector.platforms.dingtalk.cards import CARD_CALLS, DingTalkReplySurface
from imgate_connector.platforms.dingtalk.config import (
    BOT_MESSAGE_TOPIC,
    DingTalkConfig,
    DingTalkEnvironment,
    openapi_endpoint,
)
from imgate_connector.platforms.dingtalk.openapi import DingTalkOpenApi, check
from imgate_connector.platforms.dingtalk.translate import TRANSLATORS, reply_target_of, translate

log = structlog.get_logger()

SYSTEM_PING = "ping"
SYSTEM_DISCONNECT = "disconnect"


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


def _msgtype(data: dict[str, Any]) -> str:
    """The payload's message type as a label: known types only, so a sender can't grow the set."""
    value = data.get("msgtype")
    return value if isinstance(value, str) and value in TRANSLATORS else "other"


class BotMessageFrame(InboundFrame):
    """A CALLBACK frame carrying a bot message, as the inbound pipeline takes it."""

    def __init__(
        self, adapter: "DingTalkAdapter", ws: ClientConnection, frame: dict[str, Any], frame_id: str
    ) -> None:
        super().__init__(frame_id)
        self._adapter = adapter
        self._ws = ws
        self._frame = frame
        self._data: Any = None

    def read(self) -> InboundMessage:
        self._data = data = _frame_data(self._frame)
        if not isinstance(data, dict):
            raise ValueError("bot message data is not an object")
        self.msgtype = _msgtype(data)
        spec = self._adapter.spec
        return translate(data, spec.id, self._adapter.config.robot_code, (spec.name,))

    async def ack(self, *, malformed: bool = False) -> bool:
        message = "malformed payload dropped" if malformed else "OK"
        try:
            await self._ws.send(ack_frame(self.frame_id, message=message))
        except websockets.ConnectionClosed:
            return False
        return True

    def sender(self) -> ReplyTarget | None:
        adapter = self._adapter
        return reply_target_of(self._data, adapter.spec.id, adapter.config.robot_code)


class DingTalkAdapter(SocketAdapter):
    name: ClassVar[str] = Platform.DINGTALK
    environment: ClassVar[type[DingTalkEnvironment]] = DingTalkEnvironment
    # Frames up to 4 MB (DingTalk's bot messages are far smaller; anything bigger is not ours).
    max_frame_bytes: ClassVar[int] = 4 * 1024 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config = DingTalkConfig.model_validate(self.spec.config)
        http = self.resources.http
        self.api = DingTalkOpenApi(
            http,
            self.config,
            openapi_endpoint(self.config, self.environment()),
            self.resources.shared(AccessTokens),
        )
        scheduler = app_scheduler(self.resources, self.settings, self.config.client_id, CARD_CALLS)
        self._surface = DingTalkReplySurface(
            self.api, http, self.config, scheduler, self.health, self.settings
        )
        self._log = log.bind(channel_id=self.spec.id, platform=self.name)

    @property
    def surface(self) -> DingTalkReplySurface:
        return self._surface

    # -- connections ----------------------------------------------------------------------

    async def _open_link(self) -> str:
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
                self.inbound.take(BotMessageFrame(self, ws, frame, message_id))
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

    # -- media ----------------------------------------------------------------------------

    async def _media_url(self, message: InboundMessage, attachment: Attachment) -> str:
        assert attachment.download_code is not None
        robot_code = (
            message.target.data_as(DingTalkReplyData).robot_code
            or self.config.robot_code
            or self.config.client_id
        )
        return await self.api.download_url(robot_code, attachment.download_code)


ADAPTER = DingTalkAdapter
