"""Feishu's long connection: `/callback/ws/endpoint` hands out a websocket URL (carrying
`device_id` and `service_id`) and the client settings; the websocket carries pbbp2 frames."""

from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict

from imsim.call_recorder import attribute_call
from imsim.dependencies import public_base_url
from imsim.faults import take_counted_failure
from imsim.platforms.feishu.dependencies import dispatcher, feishu_state, json_body
from imsim.platforms.feishu.dispatcher import EventDispatcher
from imsim.platforms.feishu.errors import ENDPOINT_BAD_CREDENTIALS, ENDPOINT_SYSTEM_BUSY
from imsim.platforms.feishu.state import Connection, FeishuApp, FeishuState
from imsim.websocket import WebSocketSink

log = structlog.get_logger(__name__)
router = APIRouter()

ENDPOINT_PATH = "/callback/ws/endpoint"
WS_PATH = "/feishu/ws"
# The handshake refusal Feishu answers when an app has too many connections: status 514 in the
# `handshake-status` header with this `handshake-autherrcode` (lark-oapi's ws/const.py).
AUTH_FAILED = 514
EXCEED_CONN_LIMIT = 1000040350
FORBIDDEN = 403
# The HTTP status of a refused handshake; the SDK reads the headers, not the status.
REFUSAL_STATUS = 403


class EndpointBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    AppID: str = ""
    AppSecret: str = ""


def _endpoint_error(code: int, msg: str) -> JSONResponse:
    return JSONResponse({"code": code, "msg": msg, "data": None})


def _injected_failure(app: FeishuApp) -> str | None:
    """The endpoint failure this call consumes, if one is configured."""
    app.fault_config, mode = take_counted_failure(
        app.fault_config, "endpoint_failure", "endpoint_failure_count"
    )
    if mode is not None:
        app.counters.refused[f"endpoint_{mode}"] += 1
    return mode


@router.post(ENDPOINT_PATH)
async def endpoint(
    body: Annotated[EndpointBody, Depends(json_body(EndpointBody))],
    request: Request,
    state: Annotated[FeishuState, Depends(feishu_state)],
    base_url: Annotated[str, Depends(public_base_url)],
) -> Response:
    app = state.apps.get(body.AppID)
    if app is not None:
        attribute_call(request, app)
        failure = _injected_failure(app)
        if failure == "server_error":
            return JSONResponse({"code": 500, "msg": "internal server error"}, status_code=500)
        if failure == "system_busy":
            return _endpoint_error(ENDPOINT_SYSTEM_BUSY, "system busy")
        if failure == "bad_credentials":
            return _endpoint_error(ENDPOINT_BAD_CREDENTIALS, "app_id or app_secret is invalid")
    if app is None or app.app_secret != body.AppSecret:
        if app is not None:
            app.counters.refused["wrong_credentials"] += 1
        log.info("feishu_endpoint_refused", app_id=body.AppID)
        return _endpoint_error(ENDPOINT_BAD_CREDENTIALS, "app_id or app_secret is invalid")
    ticket = state.issue_ticket(app)
    ws_base = "ws" + base_url.removeprefix("http")  # http→ws, https→wss
    url = f"{ws_base}{WS_PATH}?device_id={ticket.device_id}&service_id={ticket.service_id}&access_key=imsim"
    return JSONResponse({"code": 0, "msg": "ok", "data": {"URL": url, "ClientConfig": app.client_config()}})


async def _refuse(websocket: WebSocket, status: int, msg: str, auth_errcode: int | None = None) -> None:
    """Refuse the upgrade with an HTTP answer carrying Feishu's handshake headers."""
    headers = {"handshake-status": str(status), "handshake-msg": msg}
    if auth_errcode is not None:
        headers["handshake-autherrcode"] = str(auth_errcode)
    response = Response(status_code=REFUSAL_STATUS, headers=headers)
    try:
        await websocket.send_denial_response(response)
    except RuntimeError:  # a server without the denial extension: close before accepting
        await websocket.close(code=1008, reason=msg)


@router.websocket(WS_PATH)
async def connect(
    websocket: WebSocket,
    state: Annotated[FeishuState, Depends(feishu_state)],
    events: Annotated[EventDispatcher, Depends(dispatcher)],
    device_id: str = "",
    service_id: str = "",
) -> None:
    ticket = state.redeem_ticket(device_id, service_id)
    app = state.apps.get(ticket.app_id) if ticket is not None else None
    if ticket is None or app is None:
        log.info("feishu_websocket_refused", reason="bad_ticket")
        await _refuse(websocket, FORBIDDEN, "invalid or expired connection url")
        return
    if len(app.open_connections()) >= app.max_connections:
        app.counters.refused["too_many_connections"] += 1
        log.info("feishu_websocket_refused", app_id=app.app_id, reason="too_many_connections")
        await _refuse(websocket, AUTH_FAILED, "exceed connection limit", EXCEED_CONN_LIMIT)
        return
    await websocket.accept()
    connection = Connection(ticket.device_id, ticket.service_id, app.app_id, WebSocketSink(websocket))
    await events.attach(app, connection)
    reason = "client_closed"
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            data = message.get("bytes")
            if data is None and message.get("text") is not None:
                data = message["text"].encode()
            if data is not None:
                await events.receive(app, connection, data)
    except Exception as exc:  # a broken socket ends this connection, not the server
        reason = f"error:{type(exc).__name__}"
        log.warning("feishu_websocket_failed", app_id=app.app_id, error=repr(exc))
    finally:
        events.detach(app, connection, reason)
