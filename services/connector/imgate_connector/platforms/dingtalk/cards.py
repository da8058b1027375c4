"""DingTalk's reply surface: AI cards through the card OpenAPI, plain text through webhooks.

Card calls go through the connector's card-call core (`CardSurface`: the app's scheduler, the
circuit breaker, retries); what is DingTalk's own is here: the card payloads, its flow states
and its duplicate-card codes. The first text of a card goes with its switch to "inputing" in one
call, and the final text with its switch to finished (or failed) in one call: the card instance
update carries both in its card data, as the SDK's own AI-card finish does.
"""

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import structlog

from imgate_common.bounded import BoundedSet
from imgate_common.errors import PlatformError
from imgate_common.messages import ConversationType, ReplyTarget
from imgate_common.platforms import DingTalkReplyData
from imgate_connector.platform_api import (
    CallClass,
    CardCallScheduler,
    CardExists,
    CardNotFinalized,
    CardSurface,
    CardText,
    ChannelHealth,
    ConnectorSettings,
    with_retries,
)
from imgate_connector.platforms.dingtalk.config import DingTalkConfig, card_template
from imgate_connector.platforms.dingtalk.openapi import DingTalkOpenApi, check
from imgate_connector.platforms.dingtalk.translate import PLATFORM

log = structlog.get_logger()

# Card ids a channel remembers as streaming, at most (far more than cards on screen at once).
STREAMING_CARDS_KEPT = 4096
# The text of a card that has not shown anything yet.
THINKING = ""
# Card calls an answer costs at least: the card's open, and its final (the final text with the
# flow status): what answering in one message saves when the app's budget is saturated.
CARD_CALLS = 2


# One OpenAPI call: method, path, body.
Call = tuple[str, str, dict[str, Any]]


class FlowStatus:
    """AI card states as DingTalk names them."""

    PROCESSING = "1"
    INPUTING = "2"
    FINISHED = "3"
    FAILED = "5"


def open_space(target: ReplyTarget) -> tuple[str, dict[str, Any]]:
    """The card's destination: the user's 1:1 chat with the bot, or the group (mentioning the
    sender, so they are notified of the answer)."""
    if target.conversation_type == ConversationType.GROUP:
        deliver: dict[str, Any] = {"robotCode": target.data_as(DingTalkReplyData).robot_code}
        if target.sender_employee_id:
            deliver["atUserIds"] = {
                target.sender_employee_id: target.sender_nick or target.sender_employee_id
            }
        return f"dtv1.card//IM_GROUP.{target.conversation_id}", {
            "imGroupOpenSpaceModel": {"supportForward": True},
            "imGroupOpenDeliverModel": deliver,
        }
    user = target.sender_employee_id or target.sender_id
    return f"dtv1.card//IM_ROBOT.{user}", {
        "imRobotOpenSpaceModel": {"supportForward": True},
        "imRobotOpenDeliverModel": {"spaceType": "IM_ROBOT"},
    }


class DingTalkReplySurface(CardSurface[Call]):
    def __init__(
        self,
        api: DingTalkOpenApi,
        http: httpx.AsyncClient,
        config: DingTalkConfig,
        scheduler: CardCallScheduler,
        health: ChannelHealth,
        settings: ConnectorSettings,
    ) -> None:
        super().__init__(PLATFORM, scheduler, health, settings)
        self._api = api
        self._http = http
        self._config = config
        # Cards already switched to "inputing". A card never closed here (its run forgotten, its
        # channel moved to another replica) must not stay for the process's life: the oldest go
        # first, and forgetting one costs at most one more status call.
        self._streaming = BoundedSet(STREAMING_CARDS_KEPT, ttl_s=settings.run_idle_forget_s)
        self._template, self._content_key = card_template(config)

    # -- card calls -----------------------------------------------------------------------

    async def _send(self, request: Call) -> dict[str, Any]:
        return await self._api.call(*request)

    def _label(self, request: Call) -> str:
        return request[1]

    def _card_exists(self, exc: PlatformError) -> bool:
        code = (exc.code or "").lower()
        return "duplicate" in code or "alreadyexist" in code

    def _params(self, text: str | None, status: str) -> dict[str, Any]:
        params: dict[str, Any] = {"flowStatus": status}
        if text is not None:
            params[self._content_key] = text
        return {"cardParamMap": params}

    def _status_call(self, card_id: str, text: str | None, status: str) -> Call:
        body = {
            "outTrackId": card_id,
            "cardData": self._params(text, status),
            "cardUpdateOptions": {"updateCardDataByKey": True},
        }
        return "PUT", "/v1.0/card/instances", body

    def _stream_call(self, card_id: str, text: str) -> Call:
        """The text so far; the stream is never finalized here: the final update ends the card."""
        body = {
            "outTrackId": card_id,
            "guid": str(uuid.uuid4()),
            "key": self._content_key,
            "content": text,
            "isFull": True,  # always the whole text: a repeated or reordered update is harmless
            "isFinalize": False,
            "isError": False,
        }
        return "PUT", "/v1.0/card/streaming", body

    async def _create(
        self, card_id: str, target: ReplyTarget, text: str, status: str, cls: CallClass = CallClass.FINAL
    ) -> None:
        space_id, models = open_space(target)
        body = {
            "cardTemplateId": self._template,
            "outTrackId": card_id,
            "cardData": self._params(text, status),
            "callbackType": "STREAM",
            "openSpaceId": space_id,
            "userIdType": 1,
            **models,
        }
        await self._must(("POST", "/v1.0/card/instances/createAndDeliver", body), cls)

    async def open_card(self, card_id: str, target: ReplyTarget) -> None:
        await self._create(card_id, target, THINKING, FlowStatus.PROCESSING, CallClass.OPEN)

    async def show_status(self, card_id: str, text: str, *, since: float | None = None) -> bool:
        return await self._may(
            card_id, lambda: self._status_call(card_id, text, FlowStatus.PROCESSING), since
        )

    async def update_card(self, card_id: str, text: CardText, *, since: float | None = None) -> bool:
        def call() -> Call:
            newest = text() if callable(text) else text
            if card_id in self._streaming:
                return self._stream_call(card_id, newest)
            # The first text switches the card to "inputing" in the same call (the card data
            # carries both), so the first visible text costs one call after the first token.
            return self._status_call(card_id, newest, FlowStatus.INPUTING)

        if not await self._may(card_id, call, since):
            return False
        self._streaming.add(card_id)
        return True

    async def close_card(self, card_id: str, text: str, *, failed: bool) -> None:
        # One call: the card data carries the whole final text and the finished (failed) state.
        # A repeated close (a redelivered final, the mender) sets the same data again, harmlessly.
        status = FlowStatus.FAILED if failed else FlowStatus.FINISHED
        await self._must(self._status_call(card_id, text, status))
        self._streaming.discard(card_id)

    async def post_card(self, card_id: str, target: ReplyTarget, text: str) -> None:
        try:
            await self._create(card_id, target, text, FlowStatus.FINISHED)
            return  # created finished, with its text: one call
        except CardExists:
            pass  # posted before (a redelivered final): it may not have finished, so finish it
        try:
            await self._must(self._status_call(card_id, text, FlowStatus.FINISHED))
        except Exception as exc:
            # There already: the user sees it, perhaps not finished.
            raise CardNotFinalized(f"continuation shown but not finalized: {exc}") from exc

    # -- plain messages -------------------------------------------------------------------

    async def send_text(self, target: ReplyTarget, text: str, *, markdown: bool = False) -> None:
        self._check_fence()
        dingtalk = target.data_as(DingTalkReplyData)
        expires = dingtalk.session_webhook_expires_at
        if dingtalk.session_webhook and (expires is None or expires > datetime.now(UTC)):
            if await self._send_by_webhook(target, text, markdown):
                return
        await self._send_by_robot(target, text, markdown)

    async def _send_by_webhook(self, target: ReplyTarget, text: str, markdown: bool) -> bool:
        webhook = target.data_as(DingTalkReplyData).session_webhook
        assert webhook is not None
        group = target.conversation_type == ConversationType.GROUP and target.sender_employee_id
        body: dict[str, Any]
        if markdown:
            # A markdown mention shows only where the text names the user.
            shown = f"@{target.sender_employee_id} {text}" if group else text
            body = {"msgtype": "markdown", "markdown": {"title": _title(text), "text": shown}}
        else:
            body = {"msgtype": "text", "text": {"content": text}}
        if group:
            body["at"] = {"atUserIds": [target.sender_employee_id], "isAtAll": False}

        async def post() -> dict[str, Any]:
            return check(await self._http.post(webhook, json=body))

        try:
            data = await with_retries(post)
        except (httpx.TransportError, PlatformError) as exc:
            log.warning("session_webhook_failed", error=str(exc))
            return False
        if not data.get("errcode"):
            return True
        # 300001: the webhook expired (about 1.5 h after the message); the robot API still works.
        log.warning("session_webhook_refused", errcode=data.get("errcode"), errmsg=data.get("errmsg"))
        return False

    async def _send_by_robot(self, target: ReplyTarget, text: str, markdown: bool) -> None:
        robot_code = (
            target.data_as(DingTalkReplyData).robot_code or self._config.robot_code or self._config.client_id
        )
        if markdown:
            msg_key, param = "sampleMarkdown", {"title": _title(text), "text": text}
        else:
            msg_key, param = "sampleText", {"content": text}
        body: dict[str, Any] = {
            "robotCode": robot_code,
            "msgKey": msg_key,
            "msgParam": json.dumps(param, ensure_ascii=False),
        }
        if target.conversation_type == ConversationType.GROUP:
            path = "/v1.0/robot/groupMessages/send"
            body["openConversationId"] = target.conversation_id
        elif target.sender_employee_id:
            path = "/v1.0/robot/oToMessages/batchSend"
            body["userIds"] = [target.sender_employee_id]
        else:
            raise PlatformError("no way left to reach the user: webhook expired and no staff id")
        await with_retries(lambda: self._api.call("POST", path, body))


def _title(text: str) -> str:
    """The notification line of a markdown message: its first words."""
    first = text.strip().splitlines()[0] if text.strip() else "…"
    return first.lstrip("#> *-").strip()[:30] or "…"
