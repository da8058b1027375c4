"""Feishu's own sim API (`/sim/feishu/apps/...`): tests play the user, pull Feishu's levers and
inspect what the bot did. The platform-neutral API (`/sim/platforms/feishu/...`) reaches the
same state through `FeishuPlatform`."""

import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Body, Depends, HTTPException
from pydantic import BaseModel, Field, ValidationError, model_validator

from imsim.dependencies import chosen_connections
from imsim.platform import tune_app
from imsim.platforms.feishu import identifiers as feishu_ids
from imsim.platforms.feishu.dependencies import dispatcher, feishu_app, feishu_state
from imsim.platforms.feishu.dispatcher import EventDispatcher
from imsim.platforms.feishu.events import MessageType, build_content, receive_event, timeline_text
from imsim.platforms.feishu.faults import FaultConfig
from imsim.platforms.feishu.state import Connection, FeishuApp, FeishuState, InboundEvent
from imsim.timeline import UserItem

log = structlog.get_logger(__name__)
router = APIRouter(prefix="/sim/feishu")

State = Annotated[FeishuState, Depends(feishu_state)]
App = Annotated[FeishuApp, Depends(feishu_app)]
Dispatcher = Annotated[EventDispatcher, Depends(dispatcher)]


class AppTunables(BaseModel):
    """Run-time knobs of an app; None leaves a value as it is."""

    name: str | None = None
    ack_wait: float | None = Field(None, gt=0, description="seconds an event waits for its ACK (3)")
    redeliver_schedule: list[Annotated[float, Field(ge=0)]] | None = Field(
        None,
        max_length=20,
        description="seconds after each unACKed push until the next one (15, 300, 3600, 21600); []: none",
    )
    ping_interval: int | None = Field(None, gt=0, description="ClientConfig.PingInterval, seconds")
    reconnect_count: int | None = Field(None, ge=-1)
    reconnect_interval: int | None = Field(None, ge=0)
    reconnect_nonce: int | None = Field(None, ge=0)
    max_connections: int | None = Field(None, ge=1, description="open connections per app (50)")
    chunk_size: int | None = Field(None, ge=1, description="payload bytes per data frame")
    token_ttl: int | None = Field(None, gt=0, description="tenant token lifetime, seconds (7200)")
    streaming_timeout: float | None = Field(
        None, gt=0, description="seconds until a card's streaming mode turns itself off (600)"
    )
    fault_config: dict[str, Any] | None = Field(
        None, description="fields of the fault configuration to change"
    )


class AppBody(AppTunables):
    app_id: str = Field(min_length=1)
    app_secret: str = Field(min_length=1)


class MessageBody(BaseModel):
    """A user's message. `raw_event` (an object) or `raw_payload` (any text, JSON or not) is
    pushed verbatim instead, for payloads a bot cannot read; its replies name the message id
    the payload carries (`event.message.message_id`), if any."""

    text: str | None = None
    message_type: MessageType = "text"
    file_name: str | None = None
    post: dict[str, Any] | None = Field(None, description="a post's content as the event carries it")
    sender_id: str = Field("user001", description="the user's user_id")
    sender_name: str = "Demo User"
    group: str | None = Field(None, description="the group's name; null: the p2p chat with the bot")
    mention: bool = Field(True, description="in a group, @mention the bot (as @_user_1)")
    parent_id: str | None = Field(None, description="the message this one replies to")
    raw_event: dict[str, Any] | None = None
    raw_payload: str | None = None

    @model_validator(mode="after")
    def _check(self) -> "MessageBody":
        if self.raw_event is not None and self.raw_payload is not None:
            raise ValueError("give `raw_event` or `raw_payload`, not both")
        if self.raw is None and self.message_type == "text" and self.text is None:
            raise ValueError("a text message needs `text`")
        return self

    @property
    def raw(self) -> str | None:
        """The verbatim payload, if the message is one."""
        if self.raw_event is not None:
            return json.dumps(self.raw_event, ensure_ascii=False)
        return self.raw_payload


def _raw_ids(raw: str, event_id: str) -> tuple[str, str]:
    """The event id and message id a verbatim payload carries, where it carries them; the
    message id is the event id otherwise."""
    try:
        payload = json.loads(raw)
    except ValueError:
        return event_id, event_id
    header = payload.get("header") if isinstance(payload, dict) else None
    event = payload.get("event") if isinstance(payload, dict) else None
    message = event.get("message") if isinstance(event, dict) else None
    if isinstance(header, dict) and header.get("event_id"):
        event_id = str(header["event_id"])
    message_id = message.get("message_id") if isinstance(message, dict) else None
    return event_id, str(message_id) if message_id else event_id


class ConnectionTarget(BaseModel):
    connection_id: str | None = Field(None, description="null: every open connection of the app")


# -- apps -----------------------------------------------------------------------------------------


def change_faults(
    app: FeishuApp, events: EventDispatcher, changes: dict[str, Any], *, replace: bool = False
) -> FaultConfig:
    """Apply a whole (`replace`) or partial fault configuration; a given `seed` restarts the
    app's random streams. Raises pydantic's ValidationError for an invalid configuration."""
    previous = app.fault_config
    config = FaultConfig.model_validate(changes) if replace else previous.merged(changes)
    app.fault_config = config
    if replace or "seed" in changes:
        app.random.reseed(config.seed)
    events.apply_fault_config(app, previous)
    log.info("feishu_faults_changed", app_id=app.app_id, **config.model_dump())
    return config


def _change_faults(
    app: FeishuApp, events: EventDispatcher, changes: dict[str, Any], *, replace: bool = False
) -> FaultConfig:
    try:
        return change_faults(app, events, changes, replace=replace)
    except ValidationError as exc:
        raise HTTPException(422, exc.errors(include_url=False, include_context=False)) from exc


def reset_records(app: FeishuApp, events: EventDispatcher, *, faults: bool) -> None:
    app.reset_records()
    if faults:
        app.fault_config = FaultConfig()
        app.random.reseed(None)
    events.refresh_half_dead(app)


@router.post("/apps")
async def upsert_app(body: AppBody, state: State, events: Dispatcher) -> dict[str, Any]:
    tunables = body.model_dump(exclude={"app_id", "app_secret", "name", "fault_config"})
    app = state.upsert_app(body.app_id, body.app_secret, name=body.name, **tunables)
    if body.fault_config is not None:
        _change_faults(app, events, body.fault_config)
    return app.to_json()


@router.get("/apps")
async def list_apps(state: State) -> list[dict[str, Any]]:
    return [app.to_json() for app in state.apps.values()]


@router.get("/apps/{app_id}")
async def get_app(app: App) -> dict[str, Any]:
    return app.to_json()


@router.patch("/apps/{app_id}")
async def patch_app(body: AppTunables, app: App, state: State, events: Dispatcher) -> dict[str, Any]:
    tune_app(app, **body.model_dump(exclude={"fault_config"}))
    if body.fault_config is not None:
        _change_faults(app, events, body.fault_config)
    return app.to_json()


@router.get("/apps/{app_id}/faults/config")
async def get_fault_config(app: App) -> dict[str, Any]:
    return app.fault_config.model_dump()


@router.put("/apps/{app_id}/faults/config")
async def put_fault_config(body: FaultConfig, app: App, events: Dispatcher) -> dict[str, Any]:
    return _change_faults(app, events, body.model_dump(), replace=True).model_dump()


@router.patch("/apps/{app_id}/faults/config")
async def patch_fault_config(
    app: App, events: Dispatcher, changes: Annotated[dict[str, Any], Body()]
) -> dict[str, Any]:
    return _change_faults(app, events, changes).model_dump()


@router.post("/apps/{app_id}/reset")
async def reset_app(app: App, events: Dispatcher, faults: bool = False) -> dict[str, Any]:
    reset_records(app, events, faults=faults)
    return {"reset": [app.app_id]}


# -- playing the user -------------------------------------------------------------------------------


async def send_user_message(body: MessageBody, app: FeishuApp, events: EventDispatcher) -> dict[str, Any]:
    """The user sends `body`: it joins its chat and is pushed to the bot, or queued."""
    user = app.user(body.sender_id, body.sender_name)
    chat = app.group_chat(body.group) if body.group else app.p2p_chat(user)
    event_id, message_id = feishu_ids.event_id(), feishu_ids.message_id()
    content: dict[str, Any] | None = None
    if body.raw is not None:
        raw, message_type, text = body.raw.encode(), "raw", body.raw
        event_id, message_id = _raw_ids(body.raw, event_id)
    else:
        message_type = body.message_type
        mention = bool(body.group) and body.mention
        content = build_content(
            app,
            message_id,
            message_type,
            body.text,
            file_name=body.file_name,
            mention=mention,
            post=body.post,
        )
        text = timeline_text(message_type, body.text, content)
        payload = receive_event(
            app=app,
            chat=chat,
            sender=user,
            event_id=event_id,
            message_id=message_id,
            message_type=message_type,
            content=content,
            mention=mention,
            parent_id=body.parent_id,
        )
        raw = json.dumps(payload, ensure_ascii=False).encode()
    event = InboundEvent(event_id, message_id, chat.conversation_id, raw, raw=body.raw is not None)
    chat.items.append(UserItem(event, message_type, text, content, user.user_id, user.name))
    delivered = await events.submit(app, event)
    log.info("feishu_user_message", app_id=app.app_id, event_id=event_id, delivered=delivered)
    return {
        "event_id": event_id,
        "message_id": message_id,
        "chat_id": chat.conversation_id,
        "delivered": delivered,
        "frame_id": event.frame_ids[-1] if event.frame_ids else None,
        "content": content,
    }


@router.post("/apps/{app_id}/messages")
async def send_message(body: MessageBody, app: App, events: Dispatcher) -> dict[str, Any]:
    return await send_user_message(body, app, events)


# -- what the bot did -------------------------------------------------------------------------------


def _event(app: FeishuApp, event_id: str) -> InboundEvent:
    event = app.events.get(event_id) or app.events.get(app.events_by_message.get(event_id, ""))
    if event is None:
        raise HTTPException(404, f"unknown event {event_id!r}")
    return event


def event_view(app: FeishuApp, event: InboundEvent) -> dict[str, Any]:
    chat = app.conversations.get(event.chat_id)
    user = chat.user_item(event.msg_id) if chat else None
    answers = chat.answers_to(event.msg_id) if chat else []
    return {
        **event.summary_json(),
        "user": user.to_json() if user else None,
        "answers": [answer.to_json() for answer in answers],
        "deliveries": [d.to_json() for d in app.deliveries if d.event_id == event.event_id],
        "acks": [a.to_json() for a in app.acks if a.event_id == event.event_id],
    }


@router.get("/apps/{app_id}/events")
async def list_events(app: App) -> list[dict[str, Any]]:
    result = []
    for event in app.events.values():
        chat = app.conversations.get(event.chat_id)
        answers = chat.answers_to(event.msg_id) if chat else []
        result.append({**event.summary_json(), "answers": len(answers)})
    return result


@router.get("/apps/{app_id}/events/{event_id}")
async def get_event(app: App, event_id: str) -> dict[str, Any]:
    """One event (by event id or message id): what the user sees for it, and how it travelled."""
    return event_view(app, _event(app, event_id))


@router.post("/apps/{app_id}/events/{event_id}/redeliver")
async def redeliver_event(app: App, events: Dispatcher, event_id: str) -> dict[str, Any]:
    """Forced duplicate: push the event again now (same event_id), ACKed or not."""
    delivery = await events.redeliver(app, _event(app, event_id))
    if delivery is None:
        raise HTTPException(409, "no open connection")
    return delivery.to_json()


@router.get("/apps/{app_id}/users/{user_id}")
async def get_user(app: App, user_id: str) -> dict[str, Any]:
    """A user's ids as this app's events carry them, and their p2p chat with the bot (ids are
    stable, so this answers for users who never wrote too): for crafting verbatim payloads."""
    return {
        "user_id": user_id,
        "open_id": feishu_ids.open_id(app.app_id, user_id),
        "union_id": feishu_ids.union_id(user_id),
        "p2p_chat_id": feishu_ids.p2p_chat_id(app.app_id, user_id),
        "tenant_key": app.tenant_key,
    }


@router.get("/apps/{app_id}/counters")
async def get_counters(app: App) -> dict[str, Any]:
    return app.counters_json()


@router.get("/apps/{app_id}/chats")
async def list_chats(app: App) -> list[dict[str, Any]]:
    return [chat.summary_json() for chat in app.conversations.values()]


@router.get("/apps/{app_id}/chats/{chat_id}")
async def get_chat(app: App, chat_id: str) -> dict[str, Any]:
    chat = app.conversations.get(chat_id)
    if chat is None:
        raise HTTPException(404, f"unknown chat {chat_id!r}")
    return chat.to_json()


@router.get("/apps/{app_id}/cards")
async def list_cards(app: App) -> list[dict[str, Any]]:
    return [card.to_json() for card in app.cards.values()]


@router.get("/apps/{app_id}/cards/{card_id}")
async def get_card(app: App, card_id: str) -> dict[str, Any]:
    card = app.cards.get(card_id)
    if card is None:
        raise HTTPException(404, f"unknown card {card_id!r}")
    return card.to_json()


@router.get("/apps/{app_id}/bot-messages")
async def list_bot_messages(app: App) -> list[dict[str, Any]]:
    return [{**m.to_api(app), "reply_to": m.reply_to} for m in app.bot_messages.values()]


@router.get("/apps/{app_id}/deliveries")
async def list_deliveries(app: App) -> list[dict[str, Any]]:
    return [delivery.to_json() for delivery in app.deliveries]


@router.get("/apps/{app_id}/acks")
async def list_acks(app: App) -> list[dict[str, Any]]:
    return [ack.to_json() for ack in app.acks]


@router.get("/apps/{app_id}/api-calls")
async def list_api_calls(app: App) -> list[dict[str, Any]]:
    return [call.to_json() for call in app.api_calls]


# -- pulling levers ---------------------------------------------------------------------------------


@router.get("/apps/{app_id}/connections")
async def list_connections(app: App) -> list[dict[str, Any]]:
    return [connection.to_json() for connection in app.connections.values()]


async def _pull(
    app: FeishuApp, body: ConnectionTarget | None, lever: Callable[[Connection], Awaitable[bool]]
) -> list[str]:
    """Pull a lever on every open connection, or the one named; the ids it acted on."""
    targets = chosen_connections(app.connections, (body or ConnectionTarget()).connection_id)
    return [c.connection_id for c in targets if await lever(c)]


@router.post("/apps/{app_id}/connections/drop")
async def drop_connections(
    app: App, events: Dispatcher, body: ConnectionTarget | None = None
) -> dict[str, Any]:
    """Hard drop: the TCP connection is cut without a websocket close frame."""
    return {"dropped": await _pull(app, body, lambda c: events.drop(app, c))}


@router.post("/apps/{app_id}/connections/close")
async def close_connections(
    app: App, events: Dispatcher, body: ConnectionTarget | None = None
) -> dict[str, Any]:
    """The server closes the sockets with a close frame, as when Feishu moves its clients."""
    return {"closed": await _pull(app, body, lambda c: events.close(app, c, "server_closed"))}


@router.post("/apps/{app_id}/connections/half-dead")
async def half_dead_connections(
    app: App, events: Dispatcher, body: ConnectionTarget | None = None
) -> dict[str, Any]:
    """These connections stay open but nothing passes until they close."""

    async def make_half_dead(connection: Connection) -> bool:
        events.make_half_dead(app, connection)
        return True

    return {"half_dead": await _pull(app, body, make_half_dead)}


@router.post("/apps/{app_id}/tokens/expire")
async def expire_tokens(app: App, state: State) -> dict[str, Any]:
    return {"expired": state.expire_tokens(app)}
