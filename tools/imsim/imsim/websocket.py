"""The server's side of one websocket, for every platform's gateway: serialized sends, a hard
drop below ASGI, and half-dead sockets."""

import asyncio
from typing import Any

import structlog
from fastapi import WebSocket
from starlette.websockets import WebSocketState

log = structlog.get_logger(__name__)

# A client that stops reading must not stall the timer loop.
SEND_TIMEOUT = 5.0
# Internal error: how a drop looks where the transport cannot be aborted.
CLOSE_ABORT_FALLBACK = 1011


class ServerSocket:
    """Below the ASGI interface: the server's own protocol object for one websocket, for what
    ASGI cannot express (dropping the TCP connection, not answering pings). Only uvicorn's
    sans-I/O websockets protocol, which `python -m imsim` runs, is supported; elsewhere these
    levers degrade to what ASGI can do."""

    def __init__(self, websocket: WebSocket) -> None:
        # Starlette keeps the server's receive callable; uvicorn's is a bound protocol method.
        protocol = getattr(getattr(websocket, "_receive", None), "__self__", None)
        transport = getattr(protocol, "transport", None)
        supported = all(
            hasattr(protocol, name) for name in ("handle_ping", "stop_keepalive", "start_keepalive", "conn")
        )
        self._protocol: Any = protocol if supported and transport is not None else None
        self._half_dead = False

    def abort(self) -> bool:
        if self._protocol is None:
            return False
        self._protocol.transport.abort()
        return True

    def set_half_dead(self, half_dead: bool) -> None:
        if self._protocol is None or half_dead == self._half_dead:
            return
        self._half_dead = half_dead
        protocol = self._protocol
        if half_dead:
            # Swallow the pongs the websocket layer queues for the client's pings, and stop the
            # server's own keepalive pings: nothing may reach the client.
            protocol.handle_ping = lambda: protocol.conn.data_to_send()
            protocol.stop_keepalive()
        else:
            del protocol.handle_ping  # the class's own method answers pings again
            protocol.start_keepalive()


class WebSocketSink:
    """The FrameSink of one accepted websocket; serializes sends from the loop and routes."""

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket
        self._lock = asyncio.Lock()
        self._socket = ServerSocket(websocket)

    async def send_text(self, text: str) -> bool:
        return await self._send({"type": "websocket.send", "text": text})

    async def send_bytes(self, data: bytes) -> bool:
        return await self._send({"type": "websocket.send", "bytes": data})

    async def _send(self, message: dict[str, Any]) -> bool:
        async with self._lock:
            if self._websocket.application_state != WebSocketState.CONNECTED:
                return False
            try:
                await asyncio.wait_for(self._websocket.send(message), SEND_TIMEOUT)
            except Exception as exc:  # closed mid-send, timed out: the frame did not go out
                log.info("frame_send_failed", error=type(exc).__name__)
                return False
            return True

    async def close(self, code: int, reason: str) -> None:
        async with self._lock:
            if self._websocket.application_state != WebSocketState.CONNECTED:
                return
            try:
                await self._websocket.close(code=code, reason=reason)
            except Exception as exc:
                log.info("websocket_close_failed", error=type(exc).__name__)

    async def abort(self) -> None:
        if self._socket.abort():
            return
        # Not served by uvicorn: the nearest ASGI can do is a close frame with an error code.
        log.warning("websocket_abort_unsupported")
        await self.close(CLOSE_ABORT_FALLBACK, "dropped")

    def set_half_dead(self, half_dead: bool) -> None:
        self._socket.set_half_dead(half_dead)
