"""Feishu's reply surface: CardKit streaming cards, plain replies through the message API.

A card is a CardKit card entity (card JSON 2.0 with streaming mode on and one markdown element),
sent as the reply to the user's message. Its text streams through the element's content with
the full text each time (the typewriter effect shows what was added); the final text, the
streaming mode off and the chat-list summary go in one full update of the card. Every call on
a card carries the card's next `sequence`, which must grow strictly.

Our card ids are ours (a run's id); Feishu names a card entity itself. Which entity shows our
card, whether its reply went out, and the card's last sequence are kept in Redis, so a card
opened by one replica is streamed and closed by whichever owns the channel next, and an open
tried again neither makes a second entity nor sends a second reply (the reply's `uuid` comes
from our card id: Feishu sends a reply of the same uuid once).

Card calls go through the connector's card-call core (`CardSurface`: the app's scheduler, the
circuit breaker, retries).
"""

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from imgate_common.errors import PlatformError
from imgate_common.messages import ConversationType, ReplyTarget
from imgate_common.platforms import FeishuReplyData
from imgate_common.wording import say
from imgate_connector.platform_api import (
    CallClass,
    CardCallScheduler,
    CardExists,
    CardSurface,
    CardText,
    ChannelHealth,
    ConnectorSettings,
    with_retries,
)
from imgate_connector.platforms.feishu.openapi import FeishuOpenApi
from imgate_connector.platforms.feishu.translate import PLATFORM

log = structlog.get_logger()

# The card's one text element (letters, digits, underscores, a letter first; at most 20).
ELEMENT_ID = "answer"
# Card calls an answer costs at least: the entity, its reply, the final update.
CARD_CALLS = 3
# What Redis keeps of a card, at most this long: far beyond any run, and the mending of a card
# left open; Feishu lets a card be updated for 14 days, we stop long before.
CARD_KEPT_S = 24 * 3600
# The chat list shows this much of an answer.
SUMMARY_CHARS = 60
# Reply uuids: the same card id always gives the same uuid (Feishu sends a reply once per uuid).
REPLY_NAMESPACE = uuid.UUID("7d0f6f3e-3c1a-4e55-9a55-3f0c2b8e5a11")

MESSAGES = "/open-apis/im/v1/messages"
CARDS = "/open-apis/cardkit/v1/cards"


def reply_uuid(card_id: str) -> str:
    """The uuid of the reply that shows card `card_id`."""
    return str(uuid.uuid5(REPLY_NAMESPACE, card_id))


def card_json(text: str, *, streaming: bool, summary: str | None = None) -> dict[str, Any]:
    """A card (JSON 2.0) showing `text` in its markdown element."""
    config: dict[str, Any] = {"streaming_mode": streaming, "update_multi": True}
    if streaming:
        # Print what each update adds quickly; a newer update shows the rest at once.
        config["streaming_config"] = {
            "print_frequency_ms": {"default": 30},
            "print_step": {"default": 2},
            "print_strategy": "fast",
        }
    if summary is not None:
        config["summary"] = {"content": summary}
    return {
        "schema": "2.0",
        "config": config,
        "body": {"elements": [{"tag": "markdown", "element_id": ELEMENT_ID, "content": text}]},
    }


def summary_of(text: str) -> str:
    """The line the chat list shows for a finished card."""
    line = " ".join(text.split())
    return line if len(line) <= SUMMARY_CHARS else line[: SUMMARY_CHARS - 1] + "…"


@dataclass(frozen=True)
class CardCall:
    """One card API call. With `card_id` (ours) it acts on that card's entity: `{card}` in the
    path becomes the entity's id, and the body gets the card's next sequence."""

    method: str
    path: str
    body: dict[str, Any] = field(default_factory=dict)
    card_id: str | None = None
    params: dict[str, str] | None = None


class CardRecords:
    """What Redis keeps of each card of an app: its entity, whether its reply went out, its
    last sequence."""

    def __init__(self, redis: Redis, prefix: str, app_id: str) -> None:
        self._redis = redis
        self._prefix = f"{prefix}:feishu-card:{app_id}"

    def _key(self, card_id: str) -> str:
        return f"{self._prefix}:{card_id}"

    async def get(self, card_id: str) -> tuple[str | None, str | None]:
        """(entity id, reply message id), each None while not there."""
        entity, message = await self._guard(self._redis.hmget(self._key(card_id), ["entity", "message"]))
        return _decoded(entity), _decoded(message)

    async def set_entity(self, card_id: str, entity: str) -> str:
        """Note the card's entity; the one noted first wins (returned)."""
        key = self._key(card_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, "entity", entity)
            pipe.hget(key, "entity")
            pipe.expire(key, CARD_KEPT_S)
            _, kept, _ = await self._guard(pipe.execute())
        return _decoded(kept) or entity

    async def set_message(self, card_id: str, message_id: str) -> None:
        key = self._key(card_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, "message", message_id)
            pipe.expire(key, CARD_KEPT_S)
            await self._guard(pipe.execute())

    async def next_sequence(self, card_id: str) -> tuple[str | None, int]:
        """(entity id, the card's next sequence): strictly growing, whichever replica asks."""
        key = self._key(card_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, "sequence", 1)
            pipe.hget(key, "entity")
            pipe.expire(key, CARD_KEPT_S)
            sequence, entity, _ = await self._guard(pipe.execute())
        return _decoded(entity), int(sequence)

    @staticmethod
    async def _guard(call: Any) -> Any:
        try:
            return await call
        except RedisError as exc:  # a blip: the card call is tried again like a network one
            raise PlatformError(f"card records unavailable: {type(exc).__name__}: {exc}") from exc


def _decoded(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode()
    return value if isinstance(value, str) else None


class FeishuReplySurface(CardSurface[CardCall]):
    def __init__(
        self,
        api: FeishuOpenApi,
        records: CardRecords,
        scheduler: CardCallScheduler,
        health: ChannelHealth,
        settings: ConnectorSettings,
    ) -> None:
        super().__init__(PLATFORM, scheduler, health, settings)
        self._api = api
        self.records = records
        self._thinking = say("thinking", settings.language)

    # -- card calls -----------------------------------------------------------------------

    async def _send(self, request: CardCall) -> dict[str, Any]:
        path, body = request.path, request.body
        if request.card_id is not None:
            entity, sequence = await self.records.next_sequence(request.card_id)
            if entity is None:
                raise PlatformError(f"card {request.card_id} was never created", 404)
            path = path.format(card=entity)
            body = {**body, "sequence": sequence}
        return await self._api.call(request.method, path, body, request.params)

    def _label(self, request: CardCall) -> str:
        return f"{request.method} {request.path}"

    async def _create(self, card_id: str, target: ReplyTarget, card: dict[str, Any], cls: CallClass) -> None:
        """Make the card's entity (unless an earlier try did) and send it as the reply;
        `CardExists` when its reply went out before."""
        entity, message = await self.records.get(card_id)
        if message is not None:
            raise CardExists(f"card {card_id} was sent as {message}")
        since = time.monotonic()
        if entity is None:
            body = {"type": "card_json", "data": json.dumps(card, ensure_ascii=False)}
            data = await self._must(CardCall("POST", CARDS, body), cls, since=since)
            made = (data.get("data") or {}).get("card_id")
            if not isinstance(made, str) or not made:
                raise PlatformError("cards answered without a card_id")
            entity = await self.records.set_entity(card_id, made)
        content = {"type": "card", "data": {"card_id": entity}}
        request = _message_call(target, "interactive", content, reply_uuid(card_id))
        data = await self._must(request, cls, since=since)
        sent = (data.get("data") or {}).get("message_id")
        await self.records.set_message(card_id, str(sent or "?"))

    async def open_card(self, card_id: str, target: ReplyTarget) -> None:
        await self._create(card_id, target, card_json(self._thinking, streaming=True), CallClass.OPEN)

    def _content(self, card_id: str, text: str) -> CardCall:
        path = f"{CARDS}/{{card}}/elements/{ELEMENT_ID}/content"
        return CardCall("PUT", path, {"content": text}, card_id)

    async def show_status(self, card_id: str, text: str, *, since: float | None = None) -> bool:
        return await self._may(card_id, lambda: self._content(card_id, text), since)

    async def update_card(self, card_id: str, text: CardText, *, since: float | None = None) -> bool:
        return await self._may(
            card_id, lambda: self._content(card_id, text() if callable(text) else text), since
        )

    async def close_card(self, card_id: str, text: str, *, failed: bool) -> None:
        # One call: the final text, streaming off (the chat list stops saying "generating"),
        # and the summary the chat list shows instead.
        card = card_json(text, streaming=False, summary=summary_of(text))
        body = {"card": {"type": "card_json", "data": json.dumps(card, ensure_ascii=False)}}
        await self._must(CardCall("PUT", f"{CARDS}/{{card}}", body, card_id))
        if failed:
            log.info("card_closed_failed", card_id=card_id)

    async def post_card(self, card_id: str, target: ReplyTarget, text: str) -> None:
        # Final from the start: streaming never on, nothing to close afterwards.
        card = card_json(text, streaming=False, summary=summary_of(text))
        try:
            await self._create(card_id, target, card, CallClass.FINAL)
        except CardExists:
            pass  # posted before (a redelivered final)

    # -- plain messages -------------------------------------------------------------------

    async def send_text(self, target: ReplyTarget, text: str, *, markdown: bool = False) -> None:
        self._check_fence()
        group = target.conversation_type == ConversationType.GROUP
        mention = f'<at user_id="{target.sender_id}"></at> ' if group and target.sender_id else ""
        if markdown:
            content: dict[str, Any] = {"zh_cn": {"content": [[{"tag": "md", "text": mention + text}]]}}
            request = _message_call(target, "post", content, str(uuid.uuid4()))
        else:
            request = _message_call(target, "text", {"text": mention + text}, str(uuid.uuid4()))
        # One uuid for every try: a try that reached Feishu is not sent twice.
        await with_retries(lambda: self._api.call(request.method, request.path, request.body, request.params))


def _message_call(target: ReplyTarget, msg_type: str, content: dict[str, Any], idempotency: str) -> CardCall:
    """A message in answer to the target's: a reply to it (in its thread, if it was in one),
    or, with no message to reply to, a message into its chat."""
    body: dict[str, Any] = {
        "msg_type": msg_type,
        "content": json.dumps(content, ensure_ascii=False),
        "uuid": idempotency,
    }
    if target.inbound_message_id:
        if target.data_as(FeishuReplyData).thread_id:
            body["reply_in_thread"] = True
        return CardCall("POST", f"{MESSAGES}/{quote(target.inbound_message_id, safe='')}/reply", body)
    if target.conversation_id:
        return CardCall(
            "POST",
            MESSAGES,
            {**body, "receive_id": target.conversation_id},
            params={"receive_id_type": "chat_id"},
        )
    return CardCall(
        "POST", MESSAGES, {**body, "receive_id": target.sender_id}, params={"receive_id_type": "open_id"}
    )
