"""Feishu's OpenAPI as a bot calls it: the tenant access token, the bot's own info, CardKit card
entities, IM replies and sends, and the resources (media) of users' messages."""

import asyncio
import json
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict

from imsim.call_recorder import attribute_call
from imsim.platforms.feishu import identifiers as feishu_ids
from imsim.platforms.feishu.cards import CardEntity, parse_card_json
from imsim.platforms.feishu.dependencies import feishu_state, json_body
from imsim.platforms.feishu.errors import (
    CARD_NOT_FOUND,
    CHAT_RATE_LIMITED,
    INVALID_PARAM,
    MESSAGE_CONTENT_INVALID,
    MESSAGE_NOT_FOUND,
    RECEIVER_NOT_FOUND,
    WRONG_SECRET,
    FeishuApiError,
    invalid_token,
    missing_token,
)
from imsim.platforms.feishu.events import post_text
from imsim.platforms.feishu.faults import judge_call, rate_limited
from imsim.platforms.feishu.state import BotMessage, FeishuApp, FeishuState
from imsim.timeline import CardItem, Conversation, ReplyItem

log = structlog.get_logger(__name__)
router = APIRouter()

State = Annotated[FeishuState, Depends(feishu_state)]


class FeishuBody(BaseModel):
    model_config = ConfigDict(extra="allow")


def ok(data: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"code": 0, "msg": "success", "data": data if data is not None else {}}


# -- tenant access token ------------------------------------------------------------------------


class TokenBody(FeishuBody):
    app_id: str = ""
    app_secret: str = ""


@router.post("/open-apis/auth/v3/tenant_access_token/internal")
async def tenant_access_token(
    body: Annotated[TokenBody, Depends(json_body(TokenBody))], request: Request, state: State
) -> dict[str, Any]:
    app = state.apps.get(body.app_id)
    if app is None:
        raise FeishuApiError(INVALID_PARAM, "app_id is invalid")
    attribute_call(request, app)
    if app.app_secret != body.app_secret:
        raise FeishuApiError(WRONG_SECRET, "app secret invalid")
    token, expire = state.issue_token(app)
    return {"code": 0, "msg": "ok", "tenant_access_token": token, "expire": expire}


async def token_app(
    request: Request, state: State, authorization: Annotated[str | None, Header()] = None
) -> FeishuApp:
    """The app owning a valid tenant token; also where limits and faults bite."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise missing_token()
    app = state.app_by_token(token)
    if app is None:
        owner = state.token_owner(token)
        if owner is not None:
            attribute_call(request, owner, "unauthorized")
        raise invalid_token()
    attribute_call(request, app)
    route = getattr(request.scope.get("route"), "path", request.url.path)
    verdict = judge_call(
        app.fault_config,
        app.windows,
        app.random,
        route=f"{request.method} {route}",
        path=request.url.path,
        method=request.method,
    )
    if verdict.delay:
        await asyncio.sleep(verdict.delay)
    if verdict.error is not None:
        attribute_call(request, app, verdict.outcome)
        raise verdict.error
    return app


AuthedApp = Annotated[FeishuApp, Depends(token_app)]


# -- the bot ------------------------------------------------------------------------------------


@router.get("/open-apis/bot/v3/info")
async def bot_info(app: AuthedApp) -> dict[str, Any]:
    """The app's bot as it calls itself: the open_id its group mentions carry."""
    bot = {
        "activate_status": 2,  # activated
        "app_name": app.name,
        "avatar_url": "",
        "ip_white_list": [],
        "open_id": app.bot_open_id,
    }
    return {"code": 0, "msg": "ok", "bot": bot}


# -- CardKit ------------------------------------------------------------------------------------


class CreateCardBody(FeishuBody):
    type: str
    data: str


class ElementContentBody(FeishuBody):
    content: str
    sequence: int
    uuid: str | None = None


class SettingsBody(FeishuBody):
    settings: str
    sequence: int
    uuid: str | None = None


class CardData(FeishuBody):
    type: str
    data: str


class UpdateCardBody(FeishuBody):
    card: CardData
    sequence: int
    uuid: str | None = None


def _card_op(app: FeishuApp, request: Request, card_id: str, op: str) -> CardEntity:
    """The card, once its own limit (operations per second per card) let the call through."""
    card = app.cards.get(card_id)
    if card is None:
        raise FeishuApiError(CARD_NOT_FOUND, f"card {card_id} does not exist")
    limit = app.fault_config.card_ops_limit
    window = app.windows.card(card_id)
    if not window.take(limit):
        assert limit is not None
        attribute_call(request, app, "card_rate_limited")
        raise rate_limited(limit, window)
    app.counters.card_ops[op] += 1
    return card


@router.post("/open-apis/cardkit/v1/cards")
async def create_card(
    body: Annotated[CreateCardBody, Depends(json_body(CreateCardBody))], app: AuthedApp
) -> dict[str, Any]:
    if body.type != "card_json":
        raise FeishuApiError(INVALID_PARAM, f"imsim supports type card_json, not {body.type!r}")
    card = CardEntity(
        feishu_ids.card_id(), parse_card_json(body.data), streaming_timeout=app.streaming_timeout
    )
    app.cards[card.card_id] = card
    app.counters.cards_created += 1
    log.info("feishu_card_created", app_id=app.app_id, card_id=card.card_id, streaming=card.streaming_mode)
    return ok({"card_id": card.card_id})


@router.put("/open-apis/cardkit/v1/cards/{card_id}/elements/{element_id}/content")
async def stream_element(
    card_id: str,
    element_id: str,
    body: Annotated[ElementContentBody, Depends(json_body(ElementContentBody))],
    app: AuthedApp,
    request: Request,
) -> dict[str, Any]:
    _card_op(app, request, card_id, "content").set_content(element_id, body.content, body.sequence)
    return ok()


@router.patch("/open-apis/cardkit/v1/cards/{card_id}/settings")
async def card_settings(
    card_id: str,
    body: Annotated[SettingsBody, Depends(json_body(SettingsBody))],
    app: AuthedApp,
    request: Request,
) -> dict[str, Any]:
    try:
        settings = json.loads(body.settings)
    except ValueError as exc:
        raise FeishuApiError(INVALID_PARAM, f"settings is not JSON: {exc}") from exc
    if not isinstance(settings, dict):
        raise FeishuApiError(INVALID_PARAM, "settings must be a JSON object")
    card = _card_op(app, request, card_id, "settings")
    card.apply_settings(settings, body.sequence)
    log.info("feishu_card_settings", app_id=app.app_id, card_id=card_id, streaming=card.streaming_mode)
    return ok()


@router.put("/open-apis/cardkit/v1/cards/{card_id}")
async def update_card(
    card_id: str,
    body: Annotated[UpdateCardBody, Depends(json_body(UpdateCardBody))],
    app: AuthedApp,
    request: Request,
) -> dict[str, Any]:
    if body.card.type != "card_json":
        raise FeishuApiError(INVALID_PARAM, f"imsim supports type card_json, not {body.card.type!r}")
    data = parse_card_json(body.card.data)
    _card_op(app, request, card_id, "update").replace(data, body.sequence)
    return ok()


# -- IM messages --------------------------------------------------------------------------------


class ReplyBody(FeishuBody):
    msg_type: str
    content: str
    reply_in_thread: bool = False
    uuid: str | None = None


class SendBody(FeishuBody):
    receive_id: str
    msg_type: str
    content: str
    uuid: str | None = None


def _content(body_content: str) -> dict[str, Any]:
    try:
        content = json.loads(body_content)
    except ValueError as exc:
        raise FeishuApiError(MESSAGE_CONTENT_INVALID, f"invalid message content: {exc}") from exc
    if not isinstance(content, dict):
        raise FeishuApiError(MESSAGE_CONTENT_INVALID, "invalid message content: not a JSON object")
    return content


def _answer(app: FeishuApp, msg_type: str, content: dict[str, Any], via: str) -> ReplyItem | CardItem:
    """What the user sees for a bot message."""
    if msg_type == "text":
        return ReplyItem("text", str(content.get("text", "")), via)
    if msg_type == "post":
        post = content
        if "content" not in post:  # locale-keyed, as senders write it: {"zh_cn": {...}}
            post = next((v for v in content.values() if isinstance(v, dict)), {})
        return ReplyItem("markdown", post_text(post), via, title=str(post.get("title") or "") or None)
    if msg_type == "interactive":
        if content.get("type") == "card":
            card_id = str((content.get("data") or {}).get("card_id", ""))
            card = app.cards.get(card_id)
            if card is None:
                raise FeishuApiError(CARD_NOT_FOUND, f"card {card_id} does not exist")
            return CardItem(card)
        card = CardEntity(feishu_ids.card_id(), content)  # a card sent as JSON: shown as it is
        return CardItem(card)
    raise FeishuApiError(
        MESSAGE_CONTENT_INVALID, f"imsim supports msg_type text, post and interactive, not {msg_type!r}"
    )


def _repeat(app: FeishuApp, uuid: str | None) -> BotMessage | None:
    """The message an earlier send or reply with this uuid made (Feishu's idempotency key)."""
    if not uuid or uuid not in app.message_uuids:
        return None
    app.counters.uuid_repeats += 1
    return app.bot_messages.get(app.message_uuids[uuid])


def _post(
    app: FeishuApp,
    chat: Conversation,
    msg_type: str,
    content_text: str,
    *,
    via: str,
    uuid: str | None,
    reply_to: str | None,
    parent_id: str | None,
) -> BotMessage:
    content = _content(content_text)
    limit = app.fault_config.chat_send_limit
    if not app.windows.chat(chat.conversation_id).take(limit):
        raise FeishuApiError(
            CHAT_RATE_LIMITED, "the chat's message rate limit is reached, please retry later"
        )
    item = _answer(app, msg_type, content, via)
    message = BotMessage(
        feishu_ids.message_id(), chat.conversation_id, msg_type, content_text, reply_to, parent_id=parent_id
    )
    if reply_to is not None:
        item.reply_to, item.link = reply_to, "reply"
    chat.add_answer(item, sent_at=message.created_at)
    if isinstance(item, CardItem) and isinstance(item.card, CardEntity):
        item.card.sent_as.append(message.message_id)
        app.cards.setdefault(item.card.card_id, item.card)
    app.bot_messages[message.message_id] = message
    if uuid:
        app.message_uuids[uuid] = message.message_id
    app.counters.messages_sent[via] += 1
    return message


@router.post("/open-apis/im/v1/messages/{message_id}/reply")
async def reply(
    message_id: str, body: Annotated[ReplyBody, Depends(json_body(ReplyBody))], app: AuthedApp
) -> dict[str, Any]:
    repeated = _repeat(app, body.uuid)
    if repeated is not None:
        return ok(repeated.to_api(app))
    event_id = app.events_by_message.get(message_id)
    reply_to: str | None
    if event_id is not None:
        chat_id, reply_to = app.events[event_id].chat_id, message_id
    elif message_id in app.bot_messages:
        replied = app.bot_messages[message_id]
        chat_id, reply_to = replied.chat_id, replied.reply_to
    else:
        raise FeishuApiError(MESSAGE_NOT_FOUND, f"message {message_id} does not exist")
    chat = app.conversations[chat_id]
    message = _post(
        app,
        chat,
        body.msg_type,
        body.content,
        via="reply",
        uuid=body.uuid,
        reply_to=reply_to,
        parent_id=message_id,
    )
    log.info("feishu_reply", app_id=app.app_id, message_id=message_id, msg_type=body.msg_type)
    return ok(message.to_api(app))


ReceiveIdType = Literal["chat_id", "open_id", "user_id", "union_id"]


@router.post("/open-apis/im/v1/messages")
async def send(
    body: Annotated[SendBody, Depends(json_body(SendBody))], app: AuthedApp, receive_id_type: ReceiveIdType
) -> dict[str, Any]:
    repeated = _repeat(app, body.uuid)
    if repeated is not None:
        return ok(repeated.to_api(app))
    if receive_id_type == "chat_id":
        chat = app.conversations.get(body.receive_id)
    else:
        user = app.user_by(receive_id_type, body.receive_id)
        chat = app.p2p_chat(user) if user is not None else None
    if chat is None:
        raise FeishuApiError(RECEIVER_NOT_FOUND, f"no chat for {receive_id_type} {body.receive_id}")
    message = _post(
        app, chat, body.msg_type, body.content, via="send", uuid=body.uuid, reply_to=None, parent_id=None
    )
    log.info("feishu_send", app_id=app.app_id, chat_id=chat.conversation_id, msg_type=body.msg_type)
    return ok(message.to_api(app))


# -- resources ------------------------------------------------------------------------------------


@router.get("/open-apis/im/v1/messages/{message_id}/resources/{file_key}")
async def resource(
    message_id: str, file_key: str, app: AuthedApp, kind: Annotated[str, Query(alias="type")] = ""
) -> Response:
    item = app.media.get(file_key)
    if item is None or item.message_id != message_id:
        raise FeishuApiError(MESSAGE_NOT_FOUND, f"no resource {file_key} in message {message_id}")
    if kind != item.kind:
        raise FeishuApiError(INVALID_PARAM, f"resource {file_key} is of type {item.kind}, not {kind!r}")
    headers = {}
    if item.media.file_name:
        headers["Content-Disposition"] = f'attachment; filename="{item.media.file_name}"'
    return Response(item.media.content, media_type=item.media.content_type, headers=headers)
