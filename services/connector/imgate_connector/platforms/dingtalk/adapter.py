"""DingTalk Stream mode: our own async connection loop around the SDK's frame models."""

import asyncio
import contextlib
import json
import random
import socket
from typing import Any, ClassVar
from urllib.parse import quote_plus

import structlog
import websockets
from dingtalk_stream.frames import AckMessage, CallbackMessage, Headers, SystemMessage
from dingtalk_stream.version import VERSION_STRING

from imgate_common.errors import PlatformError
from imgate_connector.platforms.base import PlatformAdapter, ReplySurface
from imgate_connector.platforms.dingtalk.cards import DingTalkReplySurface
from imgate_connector.platforms.dingtalk.config import (
    BOT_MESSAGE_TOPIC,
    DingTalkConfig,
    openapi_endpoint,
)
from imgate_connector.platforms.dingtalk.openapi import DingTalkOpenApi
from imgate_connector.platforms.dingtalk.translate import translate

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


class DingTalkAdapter(PlatformAdapter):
    name: ClassVar[str] = "dingtalk"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config = DingTalkConfig.model_validate(self.spec.config)
        self.api = DingTalkOpenApi(
            self.http, self.config, openapi_endpoint(self.config, self.settings.dingtalk_openapi_endpoint)
        )
        self._surface = DingTalkReplySurface(self.api, self.http, self.config)
        self._log = log.bind(channel_id=self.spec.id, platform=self.name)
        self._supervisor: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._frames: set[asyncio.Task[None]] = set()
        self._replace_now = asyncio.Event()

    @property
    def surface(self) -> ReplySurface:
        return self._surface

    async def start(self) -> None:
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name=f"dingtalk-{self.spec.id}")

    async def stop(self) -> None:
        tasks = [t for t in (self._supervisor, *self._connections, *self._frames) if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._supervisor = None
        self.health.disconnected()

    async def _supervise(self) -> None:
        """Keep one live connection; on `disconnect` open the next before the old one drains."""
        failures = 0
        while True:
            self._replace_now.clear()
            connection = asyncio.create_task(self._connection())
            self._connections.add(connection)
            connection.add_done_callback(self._connections.discard)
            replace = asyncio.create_task(self._replace_now.wait())
            done, _ = await asyncio.wait({connection, replace}, return_when=asyncio.FIRST_COMPLETED)
            if replace in done:
                failures = 0  # server-initiated rebalancing: reconnect at once, old one drains
                continue
            replace.cancel()
            error = connection.exception()
            if error is None:
                failures = 0
            else:
                failures += 1
                self.health.disconnected(f"{type(error).__name__}: {error}")
                self._log.warning("stream_connection_failed", error=str(error), failures=failures)
            self.health.reconnects += 1
            await asyncio.sleep(self._backoff(failures))

    def _backoff(self, failures: int) -> float:
        if failures == 0:
            return 0.1
        ceiling = min(self.settings.reconnect_max_s, self.settings.reconnect_min_s * 2 ** (failures - 1))
        return random.uniform(self.settings.reconnect_min_s / 2, ceiling)

    async def _open(self) -> str:
        body = {
            "clientId": self.config.client_id,
            "clientSecret": self.config.client_secret.get_secret_value(),
            "subscriptions": [{"type": "CALLBACK", "topic": BOT_MESSAGE_TOPIC}],
            "ua": f"imgate/0.1 dingtalk-stream/{VERSION_STRING}",
            "localIp": _local_ip(),
        }
        response = await self.http.post(f"{self.api.endpoint}/v1.0/gateway/connections/open", json=body)
        if not response.is_success:
            raise PlatformError(f"connections/open answered {response.status_code}: {response.text[:200]}")
        data = response.json()
        return f"{data['endpoint']}?ticket={quote_plus(data['ticket'])}"

    async def _connection(self) -> None:
        uri = await self._open()
        async with websockets.connect(uri, ping_interval=20, ping_timeout=20, max_size=2**22) as ws:
            self.health.connected()
            self._log.info("stream_connected")
            try:
                async for raw in ws:
                    task = asyncio.create_task(self._on_frame(ws, raw))
                    self._frames.add(task)
                    task.add_done_callback(self._frames.discard)
            finally:
                if not self._connections - {asyncio.current_task()}:
                    self.health.disconnected()
                self._log.info("stream_closed", code=ws.close_code)

    async def _on_frame(self, ws: Any, raw: str | bytes) -> None:
        try:
            frame = json.loads(raw)
            frame_type = frame.get("type")
            message_id = str((frame.get("headers") or {}).get("messageId", ""))
        except (ValueError, AttributeError):
            self._log.warning("frame_unparseable", size=len(raw))
            return
        try:
            if frame_type == SystemMessage.TYPE:
                await self._on_system(ws, frame, message_id)
            elif frame_type == CallbackMessage.TYPE:
                await self._on_callback(ws, frame, message_id)
            else:
                self._log.info("frame_ignored", type=frame_type)
                await ws.send(ack_frame(message_id, AckMessage.STATUS_NOT_IMPLEMENT, "not subscribed"))
        except websockets.ConnectionClosed:
            self._log.warning("ack_not_sent_connection_closed", frame_id=message_id)

    async def _on_system(self, ws: Any, frame: dict[str, Any], message_id: str) -> None:
        try:
            msg = SystemMessage.from_dict(frame)
        except ValueError:
            msg = SystemMessage()
        await ws.send(ack_frame(message_id, data=msg.data if isinstance(msg.data, dict) else {}))
        if msg.headers.topic == SYSTEM_DISCONNECT:
            self._log.info("stream_disconnect_requested")
            self._replace_now.set()

    async def _on_callback(self, ws: Any, frame: dict[str, Any], message_id: str) -> None:
        topic = (frame.get("headers") or {}).get("topic")
        if topic != BOT_MESSAGE_TOPIC:
            await ws.send(ack_frame(message_id, AckMessage.STATUS_NOT_IMPLEMENT, "unknown topic"))
            return
        try:
            data = CallbackMessage.from_dict(frame).data
            if not isinstance(data, dict) or "msgId" not in data:
                raise ValueError("bot message without msgId")
            inbound = translate(data, self.spec.id, self.config.robot_code)
        except (ValueError, TypeError) as exc:
            # Redelivering a payload we can never read would only repeat the failure: ACK it.
            self._log.warning("bot_message_malformed", frame_id=message_id, error=str(exc))
            self.health.error(f"malformed bot message: {exc}")
            await ws.send(ack_frame(message_id, message="malformed payload dropped"))
            return
        self.health.inbound()
        try:
            await self.sink(inbound)
        except Exception as exc:
            # No ACK: DingTalk redelivers the message later, when the bus is back.
            self._log.error("inbound_publish_failed", msg_id=inbound.message_id, error=str(exc))
            self.health.error(f"bus publish failed: {exc}")
            return
        await ws.send(ack_frame(message_id))
