"""DingTalk's Stream gateway: `connections/open` hands out a ticket, `/gateway/connect` is the
websocket the ticket opens."""

import time
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Request, WebSocket
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from imsim import identifiers
from imsim.call_recorder import attribute_call
from imsim.dependencies import public_base_url
from imsim.faults import take_counted_failure
from imsim.platforms.dingtalk.dependencies import dispatcher, sim_state
from imsim.platforms.dingtalk.dispatcher import StreamDispatcher
from imsim.platforms.dingtalk.state import SimApp, SimState, StreamConnection
from imsim.websocket import WebSocketSink

log = structlog.get_logger(__name__)
router = APIRouter()

# Policy violation: what the server answers a websocket that comes without a valid ticket.
CLOSE_BAD_TICKET = 1008


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


def _open_error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"code": code, "message": message, "requestid": identifiers.new_uuid()},
    )


def _bad_credentials() -> JSONResponse:
    return _open_error(401, "InvalidAuthentication", "clientId or clientSecret is wrong")


def _injected_open_failure(app: SimApp) -> str | None:
    """The open-failure mode this open consumes, if one is configured."""
    app.fault_config, mode = take_counted_failure(app.fault_config, "open_failure", "open_failure_count")
    if mode is not None:
        app.counters.opens_refused[mode] += 1
        log.info("connection_open_failure_injected", client_id=app.client_id, mode=mode)
    return mode


@router.post("/v1.0/gateway/connections/open")
async def open_connection(
    body: OpenConnectionBody,
    request: Request,
    state: Annotated[SimState, Depends(sim_state)],
    base_url: Annotated[str, Depends(public_base_url)],
) -> Any:
    known = state.apps.get(body.client_id)
    if known is not None:
        attribute_call(request, known)
        failure = _injected_open_failure(known)
        if failure == "server_error":
            status = known.fault_config.open_failure_status
            return _open_error(status, "ServiceUnavailable", "gateway is temporarily unavailable")
        if failure == "bad_credentials":
            return _bad_credentials()
        if failure == "ticket_refused":
            # A well-formed answer whose ticket the websocket endpoint will not accept.
            ws_base = "ws" + base_url.removeprefix("http")
            return {"endpoint": f"{ws_base}/gateway/connect", "ticket": identifiers.new_uuid()}
    app = state.app_by_credentials(body.client_id, body.client_secret)
    if app is None:
        log.info("connection_open_refused", client_id=body.client_id)
        if known is not None:
            known.counters.opens_refused["wrong_credentials"] += 1
        return _bad_credentials()
    ticket = state.issue_ticket(app, [s.model_dump() for s in body.subscriptions], body.ua, body.local_ip)
    ws_base = "ws" + base_url.removeprefix("http")  # http→ws, https→wss
    return {"endpoint": f"{ws_base}/gateway/connect", "ticket": ticket}


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
