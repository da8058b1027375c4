"""DingTalk's reply surface: AI cards through the card OpenAPI, plain text through webhooks.

Every card call waits for its turn in the app's card-call scheduler (finals first, then opens,
then streaming updates). Optional calls (streaming updates, the queued line) skip when a newer
one replaces them or the platform throttles; the calls that must happen (create, finalize) wait,
back off on 403 QpsLimit / 429 and retry, and give up only after `card_rate_limit_patience_s`.
The first text of a card goes with its switch to "inputing" in one call. Card calls that keep
failing switch cards off for a while (a circuit breaker), so answers go out as plain text at once
instead of after retries.
"""

import asyncio
import json
import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import structlog

from imgate_common.bounded import BoundedSet
from imgate_common.errors import PlatformError, RateLimited
from imgate_common.messages import ConversationType, ReplyTarget
from imgate_common.platforms import DingTalkReplyData
from imgate_connector.health import ChannelHealth
from imgate_connector.metrics import RATE_LIMITED
from imgate_connector.platforms.base import (
    CardExists,
    CardNotFinalized,
    CardsUnavailable,
    CardText,
    ReplySurface,
)
from imgate_connector.platforms.dingtalk.config import DingTalkConfig, card_template
from imgate_connector.platforms.dingtalk.openapi import DingTalkOpenApi, check, transient
from imgate_connector.platforms.dingtalk.translate import PLATFORM
from imgate_connector.scheduler import CallClass, CardCallScheduler
from imgate_connector.settings import ConnectorSettings

log = structlog.get_logger()

# Transient failures (5xx, network) of a call that must happen are tried this often in all.
TRANSIENT_ATTEMPTS = 3
# Card ids a channel remembers as streaming, at most (far more than cards on screen at once).
STREAMING_CARDS_KEPT = 4096
# The text of a card that has not shown anything yet.
THINKING = ""
# Card calls an answer costs at least: the card's open, and its final (text finalized, then the
# flow status): what answering in one message saves when the app's budget is saturated.
CARD_CALLS = 3


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


class CardCircuit:
    """Consecutive card failures trip it; while open, cards are not tried at all."""

    def __init__(self, trip_after: int, cooldown_s: float) -> None:
        self._trip_after = trip_after
        self._cooldown = cooldown_s
        self._failures = 0
        self._open_until = 0.0

    @property
    def open(self) -> bool:
        return time.monotonic() < self._open_until

    def success(self) -> None:
        self._failures = 0

    def failure(self) -> bool:
        """Count one; True when this failure tripped the circuit."""
        self._failures += 1
        if self._failures >= self._trip_after and not self.open:
            self._open_until = time.monotonic() + self._cooldown
            self._failures = 0
            return True
        return False


def _duplicate(exc: PlatformError) -> bool:
    code = (exc.code or "").lower()
    return "duplicate" in code or "alreadyexist" in code


class DingTalkReplySurface(ReplySurface):
    def __init__(
        self,
        api: DingTalkOpenApi,
        http: httpx.AsyncClient,
        config: DingTalkConfig,
        scheduler: CardCallScheduler,
        health: ChannelHealth,
        settings: ConnectorSettings,
    ) -> None:
        self._api = api
        self._http = http
        self._config = config
        self.scheduler = scheduler
        self._health = health
        health.card_mode = lambda: str(scheduler.mode)
        self._patience = settings.card_rate_limit_patience_s
        self._circuit = CardCircuit(settings.card_failures_to_trip, settings.card_cooldown_s)
        # Cards already switched to "inputing". A card never closed here (its run forgotten, its
        # channel moved to another replica) must not stay for the process's life: the oldest go
        # first, and forgetting one costs at most one more status call.
        self._streaming = BoundedSet(STREAMING_CARDS_KEPT, ttl_s=settings.run_idle_forget_s)
        self._template, self._content_key = card_template(config)
        self.max_card_chars = settings.card_max_chars
        self.card_calls = 0

    # -- card calls -----------------------------------------------------------------------

    def _throttled(self, exc: RateLimited, path: str) -> None:
        self._health.rate_limit_hits += 1
        RATE_LIMITED.labels(PLATFORM).inc()
        self._health.error(f"card API throttled: {exc}")
        log.warning("card_api_throttled", path=path, status=exc.status, code=exc.code)

    async def _must(
        self,
        method: str,
        path: str,
        body: dict[str, Any],
        cls: CallClass = CallClass.FINAL,
        since: float | None = None,
    ) -> dict[str, Any]:
        """A call that has to happen: waits for its turn, retries throttling and blips. Calls of
        one final share `since`, so a final begun goes on before finals begun after it."""
        if self._circuit.open:
            raise CardsUnavailable("card calls are paused after repeated failures")
        started = time.monotonic()
        deadline = started + self._patience
        throttled = failed = 0
        while True:
            await self.scheduler.acquire(cls, order=started if since is None else since)
            self._check_fence()
            self.card_calls += 1
            try:
                result = await self._api.call(method, path, body)
            except RateLimited as exc:
                self._throttled(exc, path)
                await self.scheduler.penalize()
                throttled += 1
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(min(4.0, 0.25 * 2**throttled) * random.uniform(0.5, 1.0))
                continue
            except PlatformError as exc:
                if _duplicate(exc):
                    raise CardExists(str(exc), exc.status, exc.code) from exc
                failed += 1
                if self._circuit.failure():
                    log.warning("card_circuit_open", error=str(exc))
                if transient(exc) and failed < TRANSIENT_ATTEMPTS and not self._circuit.open:
                    await asyncio.sleep(0.25 * 2**failed * random.uniform(0.5, 1.0))
                    continue
                raise
            self._circuit.success()
            return result

    async def _may(self, card_id: str, call: Callable[[], Call], since: float | None) -> bool:
        """An optional call: waits for a slot left by the calls that must happen, the card whose
        reader waited longest (`since`) first; made (`call()`) only once its turn came, so it
        carries what is newest then. False if it did not go."""
        if self._circuit.open or not await self.scheduler.acquire(CallClass.STREAM, key=card_id, order=since):
            return False
        if self.fence is not None and not self.fence.valid():
            return False
        method, path, body = call()
        self.card_calls += 1
        try:
            await self._api.call(method, path, body)
        except RateLimited as exc:
            self._throttled(exc, path)
            await self.scheduler.penalize()
            return False
        except PlatformError as exc:
            self._health.error(f"card update failed: {exc}")
            log.warning("card_update_failed", path=path, error=str(exc))
            if transient(exc):
                self._circuit.failure()
            return False
        return True

    def _params(self, text: str | None, status: str) -> dict[str, Any]:
        params: dict[str, Any] = {"flowStatus": status}
        if text is not None:
            params[self._content_key] = text
        return {"cardParamMap": params}

    def _status_call(self, card_id: str, text: str | None, status: str) -> tuple[str, str, dict[str, Any]]:
        body = {
            "outTrackId": card_id,
            "cardData": self._params(text, status),
            "cardUpdateOptions": {"updateCardDataByKey": True},
        }
        return "PUT", "/v1.0/card/instances", body

    def _stream_call(
        self, card_id: str, text: str, *, final: bool, error: bool = False
    ) -> tuple[str, str, dict[str, Any]]:
        body = {
            "outTrackId": card_id,
            "guid": str(uuid.uuid4()),
            "key": self._content_key,
            "content": text,
            "isFull": True,  # always the whole text: a repeated or reordered update is harmless
            "isFinalize": final,
            "isError": error,
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
        await self._must("POST", "/v1.0/card/instances/createAndDeliver", body, cls)

    async def open_card(self, card_id: str, target: ReplyTarget) -> None:
        await self._create(card_id, target, THINKING, FlowStatus.PROCESSING, CallClass.OPEN)

    def card_admitted(self) -> bool:
        return self.scheduler.admit()

    def withdraw(self, card_id: str) -> None:
        self.scheduler.withdraw(card_id)

    async def show_status(self, card_id: str, text: str, *, since: float | None = None) -> bool:
        return await self._may(
            card_id, lambda: self._status_call(card_id, text, FlowStatus.PROCESSING), since
        )

    async def update_card(self, card_id: str, text: CardText, *, since: float | None = None) -> bool:
        def call() -> Call:
            newest = text() if callable(text) else text
            if card_id in self._streaming:
                return self._stream_call(card_id, newest, final=False)
            # The first text switches the card to "inputing" in the same call (the card data
            # carries both), so the first visible text costs one call after the first token.
            return self._status_call(card_id, newest, FlowStatus.INPUTING)

        if not await self._may(card_id, call, since):
            return False
        self._streaming.add(card_id)
        return True

    async def close_card(self, card_id: str, text: str, *, failed: bool) -> None:
        since = time.monotonic()
        await self._must(*self._stream_call(card_id, text, final=True, error=failed), since=since)
        self._streaming.discard(card_id)
        status = FlowStatus.FAILED if failed else FlowStatus.FINISHED
        try:
            await self._must(*self._status_call(card_id, text, status), since=since)
        except Exception as exc:
            # The card shows the final text already; failing here would send it again as a
            # plain reply, and the user would see the answer twice.
            log.warning("card_state_not_updated", card_id=card_id, error=str(exc))

    async def post_card(self, card_id: str, target: ReplyTarget, text: str) -> None:
        since = time.monotonic()
        try:
            await self._create(card_id, target, text, FlowStatus.FINISHED)
        except CardExists:
            pass  # posted before (a redelivered final): finalize it again, harmlessly
        try:
            await self._must(*self._stream_call(card_id, text, final=True), since=since)
        except Exception as exc:
            # Created with its text: the user sees it already.
            raise CardNotFinalized(f"continuation shown but not finalized: {exc}") from exc

    # -- plain messages -------------------------------------------------------------------

    def _check_fence(self) -> None:
        if self.fence is not None:
            self.fence.check()

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
        for attempt in range(TRANSIENT_ATTEMPTS):
            try:
                response = await self._http.post(webhook, json=body)
                data = check(response)
            except (httpx.TransportError, PlatformError) as exc:
                if attempt + 1 < TRANSIENT_ATTEMPTS and transient(exc):
                    await asyncio.sleep(0.3 * 2**attempt)
                    continue
                log.warning("session_webhook_failed", error=str(exc))
                return False
            if not data.get("errcode"):
                return True
            # 300001: the webhook expired (about 1.5 h after the message); the robot API still works.
            log.warning("session_webhook_refused", errcode=data.get("errcode"), errmsg=data.get("errmsg"))
            return False
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
        for attempt in range(TRANSIENT_ATTEMPTS):
            try:
                await self._api.call("POST", path, body)
                return
            except PlatformError as exc:
                if attempt + 1 < TRANSIENT_ATTEMPTS and transient(exc):
                    await asyncio.sleep(0.3 * 2**attempt)
                    continue
                raise


def _title(text: str) -> str:
    """The notification line of a markdown message: its first words."""
    first = text.strip().splitlines()[0] if text.strip() else "…"
    return first.lstrip("#> *-").strip()[:30] or "…"
