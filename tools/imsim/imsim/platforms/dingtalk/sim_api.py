"""DingTalk's sim API (`/sim/apps/...`): tests play the user, pull DingTalk's fault levers and
inspect what the bot did."""

import json
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Body, Depends, HTTPException, Request
from pydantic import BaseModel, Field, ValidationError, model_validator

from imsim import identifiers
from imsim.dependencies import chosen_connections, public_base_url
from imsim.media import Media
from imsim.platform import tune_app
from imsim.platforms.dingtalk import identifiers as dingtalk_ids
from imsim.platforms.dingtalk.bot_message import build_bot_message, complete_content, timeline_text
from imsim.platforms.dingtalk.dependencies import dispatcher, sim_app, sim_state
from imsim.platforms.dingtalk.dispatcher import StreamDispatcher
from imsim.platforms.dingtalk.faults import Fault, FaultConfig
from imsim.platforms.dingtalk.state import InboundMessage, SimApp, SimState, StreamConnection
from imsim.timeline import UserItem

log = structlog.get_logger(__name__)
router = APIRouter(prefix="/sim")

State = Annotated[SimState, Depends(sim_state)]
App = Annotated[SimApp, Depends(sim_app)]
Dispatcher = Annotated[StreamDispatcher, Depends(dispatcher)]


class AppTunables(BaseModel):
    """Run-time knobs of an app; None leaves a value as it is."""

    name: str | None = None
    redeliver_after: float | None = Field(None, gt=0)
    ping_interval: float | None = Field(None, gt=0)
    disconnect_grace: float | None = Field(None, ge=0)
    token_ttl: int | None = Field(None, gt=0)
    session_ttl: float | None = Field(None, gt=0)
    card_qps_limit: int | None = Field(None, gt=0)
    fault_config: dict[str, Any] | None = Field(
        None, description="fields of the fault configuration to change (see /faults/config)"
    )


class AppBody(AppTunables):
    client_id: str = Field(min_length=1)
    client_secret: str = Field(min_length=1)
    robot_code: str | None = None


class AppPatch(AppTunables):
    """Like the other knobs, but an explicit `"card_qps_limit": null` lifts the limit."""


class MessageBody(BaseModel):
    text: str | None = None
    msgtype: Literal["text", "richText", "picture", "audio", "file", "video"] = "text"
    content: dict[str, Any] | None = None
    sender_staff_id: str = "user001"
    sender_nick: str = "Demo User"
    conversation_type: Literal["1", "2"] = "1"
    conversation_id: str | None = None
    conversation_title: str | None = None
    at_bot: bool = True
    is_admin: bool = False
    raw_data: str | None = None

    @model_validator(mode="after")
    def _check(self) -> "MessageBody":
        if self.raw_data is None and self.msgtype == "text" and self.text is None:
            raise ValueError("a text message needs `text`")
        if self.conversation_type == "2" and not self.conversation_id and not self.conversation_title:
            raise ValueError("a group message needs conversation_id or conversation_title")
        return self


class DisconnectBody(BaseModel):
    connection_id: str | None = None
    reason: str = "rebalance"


class ConnectionTarget(BaseModel):
    connection_id: str | None = Field(None, description="null: every open connection of the app")


class FaultBody(BaseModel):
    path: str = Field(description="OpenAPI path, e.g. /v1.0/card/streaming")
    method: str | None = None
    status: int = Field(403, ge=400, le=599)
    code: str = "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi"
    message: str = "injected by imsim"
    times: int | None = Field(1, ge=1, description="null: until cleared")


# -- apps -----------------------------------------------------------------------------------


def change_faults(
    app: SimApp, stream: StreamDispatcher, changes: dict[str, Any], *, replace: bool = False
) -> FaultConfig:
    """Apply a whole (`replace`) or partial fault configuration; a given `seed` (null too)
    restarts the app's random streams, so the same seed replays the same faults. Raises
    pydantic's ValidationError for an invalid configuration."""
    previous = app.fault_config
    config = FaultConfig.model_validate(changes) if replace else previous.merged(changes)
    app.fault_config = config
    if replace or "seed" in changes:
        app.random.reseed(config.seed)
    stream.apply_fault_config(app, previous)
    log.info("fault_config_changed", client_id=app.client_id, **config.model_dump())
    return config


def _change_faults(
    app: SimApp, stream: StreamDispatcher, changes: dict[str, Any], *, replace: bool = False
) -> FaultConfig:
    try:
        return change_faults(app, stream, changes, replace=replace)
    except ValidationError as exc:
        raise HTTPException(422, exc.errors(include_url=False, include_context=False)) from exc


def reset_records(app: SimApp, state: SimState, stream: StreamDispatcher, *, faults: bool) -> None:
    state.reset_app(app, faults=faults)
    stream.refresh_half_dead(app)


@router.post("/apps")
async def upsert_app(body: AppBody, state: State, stream: Dispatcher) -> dict[str, Any]:
    tunables = body.model_dump(exclude={"client_id", "client_secret", "robot_code", "name", "fault_config"})
    app = state.upsert_app(
        body.client_id, body.client_secret, robot_code=body.robot_code, name=body.name, **tunables
    )
    if body.fault_config is not None:
        _change_faults(app, stream, body.fault_config)
    log.info("app_upserted", client_id=app.client_id)
    return app.to_json()


@router.get("/apps")
async def list_apps(state: State) -> list[dict[str, Any]]:
    return [app.to_json() for app in state.apps.values()]


@router.get("/apps/{client_id}")
async def get_app(app: App) -> dict[str, Any]:
    return app.to_json()


@router.patch("/apps/{client_id}")
async def patch_app(body: AppPatch, app: App, state: State, stream: Dispatcher) -> dict[str, Any]:
    tune_app(app, **body.model_dump(exclude={"card_qps_limit", "fault_config"}))
    if "card_qps_limit" in body.model_fields_set:
        _change_faults(app, stream, {"card_qps_limit": body.card_qps_limit})
    if body.fault_config is not None:
        _change_faults(app, stream, body.fault_config)
    return app.to_json()


@router.get("/apps/{client_id}/faults/config")
async def get_fault_config(app: App) -> dict[str, Any]:
    return app.fault_config.model_dump()


@router.put("/apps/{client_id}/faults/config")
async def put_fault_config(body: FaultConfig, app: App, stream: Dispatcher) -> dict[str, Any]:
    """Replace the whole configuration: fields left out go back to their defaults."""
    return _change_faults(app, stream, body.model_dump(), replace=True).model_dump()


@router.patch("/apps/{client_id}/faults/config")
async def patch_fault_config(
    app: App, stream: Dispatcher, changes: Annotated[dict[str, Any], Body()]
) -> dict[str, Any]:
    """Change only the fields given."""
    return _change_faults(app, stream, changes).model_dump()


@router.post("/apps/{client_id}/reset")
async def reset_app(app: App, state: State, stream: Dispatcher, faults: bool = False) -> dict[str, Any]:
    """Forget records and counters; keep the app, its settings and connections. `?faults=true`
    also restores the default fault configuration and clears one-shot faults."""
    reset_records(app, state, stream, faults=faults)
    log.info("app_reset", client_id=app.client_id, faults=faults)
    return {"reset": [app.client_id]}


# -- playing the user -----------------------------------------------------------------------


async def send_user_message(
    body: MessageBody, app: SimApp, state: SimState, stream: StreamDispatcher, base_url: str
) -> dict[str, Any]:
    """The user sends `body`: it joins its conversation and is pushed to the bot, or queued."""
    if body.conversation_type == "1":
        conversation = app.single_conversation(body.sender_staff_id, body.sender_nick)
    else:
        conversation = app.group_conversation(body.conversation_id, body.conversation_title)
    msg_id = dingtalk_ids.msg_id()
    session = state.open_session(app, conversation, msg_id)
    if body.raw_data is not None:
        data, msgtype, content, text = body.raw_data, "raw", None, body.raw_data
    else:
        msgtype = body.msgtype
        content = complete_content(state, msgtype, body.text, body.content)
        text = timeline_text(msgtype, body.text, content)
        data = json.dumps(
            build_bot_message(
                app=app,
                conversation=conversation,
                session=session,
                base_url=base_url,
                msg_id=msg_id,
                msgtype=msgtype,
                text=body.text,
                content=content,
                sender_staff_id=body.sender_staff_id,
                sender_nick=body.sender_nick,
                at_bot=body.at_bot,
                is_admin=body.is_admin,
            ),
            ensure_ascii=False,
        )
    message = InboundMessage(msg_id, data, conversation.conversation_id, raw=body.raw_data is not None)
    conversation.items.append(
        UserItem(message, msgtype, text, content, body.sender_staff_id, body.sender_nick)
    )
    delivered = await stream.submit(app, message)
    log.info(
        "user_message",
        client_id=app.client_id,
        msg_id=msg_id,
        delivered=delivered,
        conversation_id=conversation.conversation_id,
    )
    return {
        "msg_id": msg_id,
        "conversation_id": conversation.conversation_id,
        "delivered": delivered,
        "frame_id": message.frame_ids[-1] if message.frame_ids else None,
    }


@router.post("/apps/{client_id}/messages")
async def send_message(
    body: MessageBody, app: App, state: State, stream: Dispatcher, request: Request
) -> dict[str, Any]:
    return await send_user_message(body, app, state, stream, public_base_url(request))


@router.post("/apps/{client_id}/media")
async def upload_media(
    app: App, state: State, request: Request, file_name: str | None = None
) -> dict[str, Any]:
    """Raw request body = the bytes; use the returned code in a message's `content`."""
    content = await request.body()
    content_type = request.headers.get("content-type", "application/octet-stream")
    code = identifiers.download_code()
    state.media[code] = Media(content, content_type, file_name)
    return {"download_code": code, "size": len(content), "content_type": content_type}


# -- what the bot did -----------------------------------------------------------------------


def _message(app: SimApp, msg_id: str) -> InboundMessage:
    message = app.messages.get(msg_id)
    if message is None:
        raise HTTPException(404, f"unknown message {msg_id!r}")
    return message


@router.get("/apps/{client_id}/messages")
async def list_messages(app: App) -> list[dict[str, Any]]:
    result = []
    for message in app.messages.values():
        conversation = app.conversations.get(message.conversation_id)
        answers = conversation.answers_to(message.msg_id) if conversation else []
        result.append({**message.summary_json(), "answers": len(answers)})
    return result


@router.get("/apps/{client_id}/messages/{msg_id:path}")
async def get_message(app: App, msg_id: str) -> dict[str, Any]:
    """What the user sees for one message: it, and the answers tied to it (cards with their
    update history, replies), plus how it travelled (deliveries, ACKs)."""
    message = _message(app, msg_id)
    conversation = app.conversations.get(message.conversation_id)
    user = conversation.user_item(msg_id) if conversation else None
    answers = conversation.answers_to(msg_id) if conversation else []
    return {
        **message.summary_json(),
        "user": user.to_json() if user else None,
        "answers": [answer.to_json() for answer in answers],
        "deliveries": [d.to_json() for d in app.deliveries if d.msg_id == msg_id],
        "acks": [a.to_json() for a in app.acks if a.msg_id == msg_id],
    }


@router.get("/apps/{client_id}/counters")
async def get_counters(app: App) -> dict[str, Any]:
    return app.counters_json()


@router.get("/apps/{client_id}/conversations")
async def list_conversations(app: App, summary: bool = False) -> list[dict[str, Any]]:
    """`?summary=true` leaves the items out (the chat page polls this)."""
    if summary:
        return [c.summary_json() for c in app.conversations.values()]
    return [c.to_json() for c in app.conversations.values()]


@router.get("/apps/{client_id}/conversations/{conversation_id:path}")
async def get_conversation(app: App, conversation_id: str) -> dict[str, Any]:
    conversation = app.conversations.get(conversation_id)
    if conversation is None:
        raise HTTPException(404, f"unknown conversation {conversation_id!r}")
    return conversation.to_json()


@router.get("/apps/{client_id}/cards")
async def list_cards(app: App) -> list[dict[str, Any]]:
    return [card.to_json() for card in app.cards.values()]


@router.get("/apps/{client_id}/cards/{out_track_id}")
async def get_card(app: App, out_track_id: str) -> dict[str, Any]:
    card = app.cards.get(out_track_id)
    if card is None:
        raise HTTPException(404, f"unknown card {out_track_id!r}")
    return card.to_json()


@router.get("/apps/{client_id}/acks")
async def list_acks(app: App) -> list[dict[str, Any]]:
    return [ack.to_json() for ack in app.acks]


@router.get("/apps/{client_id}/deliveries")
async def list_deliveries(app: App) -> list[dict[str, Any]]:
    return [delivery.to_json() for delivery in app.deliveries]


@router.get("/apps/{client_id}/pings")
async def list_pings(app: App) -> list[dict[str, Any]]:
    return [ping.to_json() for ping in app.pings]


@router.get("/apps/{client_id}/api-calls")
async def list_api_calls(app: App) -> list[dict[str, Any]]:
    return [call.to_json() for call in app.api_calls]


# -- pulling levers -------------------------------------------------------------------------


@router.get("/apps/{client_id}/connections")
async def list_connections(app: App) -> list[dict[str, Any]]:
    return [connection.to_json() for connection in app.connections.values()]


def _targets(app: SimApp, connection_id: str | None) -> list[StreamConnection]:
    return chosen_connections(app.connections, connection_id)


@router.post("/apps/{client_id}/connections/drop")
async def drop_connections(
    app: App, stream: Dispatcher, body: ConnectionTarget | None = None
) -> dict[str, Any]:
    """Hard drop: the TCP connection is cut without a websocket close frame."""
    body = body or ConnectionTarget()
    dropped = []
    for connection in _targets(app, body.connection_id):
        if await stream.drop(app, connection):
            dropped.append(connection.connection_id)
    return {"dropped": dropped}


@router.post("/apps/{client_id}/connections/half-dead")
async def half_dead_connections(
    app: App, stream: Dispatcher, body: ConnectionTarget | None = None
) -> dict[str, Any]:
    """These connections stay open but nothing passes until they close; unlike the
    `half_dead` fault, connections opened afterwards are healthy."""
    body = body or ConnectionTarget()
    targets = _targets(app, body.connection_id)
    for connection in targets:
        stream.make_half_dead(app, connection)
    return {"half_dead": [c.connection_id for c in targets]}


@router.post("/apps/{client_id}/messages/{msg_id:path}/redeliver")
async def redeliver_message(app: App, stream: Dispatcher, msg_id: str) -> dict[str, Any]:
    """Forced duplicate: push the message again (new frame id, same data), ACKed or not."""
    message = _message(app, msg_id)
    delivery = await stream.redeliver(app, message)
    if delivery is None:
        raise HTTPException(409, "no open connection takes this message's topic")
    return delivery.to_json()


@router.post("/apps/{client_id}/disconnect")
async def disconnect(app: App, stream: Dispatcher, body: DisconnectBody | None = None) -> dict[str, Any]:
    body = body or DisconnectBody()
    sent = []
    for connection in _targets(app, body.connection_id):
        frame_id = await stream.send_disconnect(app, connection, body.reason)
        if frame_id is not None:
            sent.append({"connection_id": connection.connection_id, "frame_id": frame_id})
    return {"sent": sent, "close_after": app.disconnect_grace}


@router.post("/apps/{client_id}/tokens/expire")
async def expire_tokens(app: App, state: State) -> dict[str, Any]:
    return {"expired": state.expire_tokens(app)}


@router.post("/apps/{client_id}/sessions/expire")
async def expire_sessions(app: App, state: State) -> dict[str, Any]:
    return {"expired": state.expire_sessions(app)}


@router.get("/apps/{client_id}/faults")
async def list_faults(app: App) -> list[dict[str, Any]]:
    return [fault.to_json() for fault in app.faults]


@router.post("/apps/{client_id}/faults")
async def add_fault(body: FaultBody, app: App) -> dict[str, Any]:
    fault = Fault(
        identifiers.new_uuid(),
        body.path,
        body.method.upper() if body.method else None,
        body.status,
        body.code,
        body.message,
        body.times,
    )
    app.faults.append(fault)
    return fault.to_json()


@router.delete("/apps/{client_id}/faults")
async def clear_faults(app: App) -> dict[str, Any]:
    cleared = len(app.faults)
    app.faults.clear()
    return {"cleared": cleared}
