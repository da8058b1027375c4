"""DingTalk's Stream gateway: `connections/open` hands out a ticket, `/gateway/connect` is the
websocket the ticket opens."""

import asyncio
import time
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, WebSocket
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.websockets import WebSocketState

from imsim import identifiers
from imsim.dependencies import dispatcher, public_base_url, sim_state
from imsim.dispatcher import StreamDispatcher
from imsim.state import SimState, StreamConnection

log = structlog.get_logger(__name__)
router = APIRouter()

# Policy violation: what the server answers a websocket that comes without a valid ticket.
CLOSE_BAD_TICKET = 1008
# A client that stops reading must not stall the timer loop.
SEND_TIMEOUT = 5.0


class Subscription(BaseModel):
    type: str
    topic: str


class OpenConnectionBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    client_id: str = Field(alias="clientId")
    client_secret: str = Field(alias="clientSecret")
    subscriptions: list[Subscription] = Field(default_factory=list)
    ua: str = ""
    local_ip: str = Field("", alias="localIp")


@router.post("/v1.0/gateway/connections/open")
async def open_connection(
    body: OpenConnectionBody,
    state: Annotated[SimState, Depends(sim_state)],
    base_url: Annotated[str, Depends(public_base_url)],
) -> Any:
    app = state.app_by_credentials(body.client_id, body.client_secret)
    if app is None:
        log.info("connection_open_refused", client_id=body.client_id)
        return JSONResponse(
            status_code=401,
            content={
                "code": "InvalidAuthentication",
                "message": "clientId or clientSecret is wrong",
                "requestid": identifiers.new_uuid(),
            },
        )
    ticket = state.issue_ticket(app, [s.model_dump() for s in body.subscriptions], body.ua, body.local_ip)
    ws_base = "ws" + base_url.removeprefix("http")  # http→ws, https→wss
    return {"endpoint": f"{ws_base}/gateway/connect", "ticket": ticket}


class WebSocketSink:
    """The FrameSink of one accepted websocket; serializes sends from the loop and routes."""

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket
        self._lock = asyncio.Lock()

    async def send_text(self, text: str) -> bool:
        async with self._lock:
            if self._websocket.application_state != WebSocketState.CONNECTED:
                return False
            try:
                await asyncio.wait_for(self._websocket.send_text(text), SEND_TIMEOUT)
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


@router.websocket("/gateway/connect")
async def connect(
    websocket: WebSocket,
    state: Annotated[SimState, Depends(sim_state)],
    stream: Annotated[StreamDispatcher, Depends(dispatcher)],
    ticket: str = "",
) -> None:
    grant = state.redeem_ticket(ticket)
    app = state.apps.get(grant.client_id) if grant is not None else None
    if grant is None or app is None:
        log.info("websocket_refused", reason="bad_ticket")
        await websocket.close(code=CLOSE_BAD_TICKET)  # before accept: the upgrade is refused
        return
    await websocket.accept()
    connection = StreamConnection(
        connection_id=identifiers.new_uuid(),
        client_id=app.client_id,
        subscriptions=grant.subscriptions,
        ua=grant.ua,
        local_ip=grant.local_ip,
        sink=WebSocketSink(websocket),
        last_ping_at=time.monotonic(),
    )
    await stream.attach(app, connection)
    reason = "client_closed"
    try:
        while True:
            event = await websocket.receive()
            if event["type"] == "websocket.disconnect":
                break
            text = event.get("text")
            if text is None and event.get("bytes") is not None:
                text = event["bytes"].decode("utf-8", errors="replace")
            if text is not None:
                stream.record_client_frame(app, connection, text)
    except Exception as exc:  # a broken socket ends this connection, not the server
        reason = f"error:{type(exc).__name__}"
        log.warning(
            "websocket_failed",
            client_id=app.client_id,
            connection_id=connection.connection_id,
            error=repr(exc),
        )
    finally:
        if connection.close_due is not None and connection.closed_at is None:
            reason = "client_closed_after_disconnect"
        stream.detach(app, connection, reason)
