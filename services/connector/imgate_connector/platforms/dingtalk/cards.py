"""DingTalk's reply surface: AI cards through the card OpenAPI, plain text through webhooks."""

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import structlog

from imgate_common.errors import PlatformError
from imgate_common.messages import ConversationType, ReplyTarget
from imgate_connector.platforms.base import ReplySurface
from imgate_connector.platforms.dingtalk.config import DingTalkConfig, card_template
from imgate_connector.platforms.dingtalk.openapi import DingTalkOpenApi

log = structlog.get_logger()


class FlowStatus:
    """AI card states as DingTalk names them."""

    PROCESSING = "1"
    INPUTING = "2"
    FINISHED = "3"
    FAILED = "5"


def open_space(target: ReplyTarget) -> tuple[str, dict[str, Any]]:
    """The card's destination: the user's 1:1 chat with the bot, or the group."""
    if target.conversation_type == ConversationType.GROUP:
        return f"dtv1.card//IM_GROUP.{target.conversation_id}", {
            "imGroupOpenSpaceModel": {"supportForward": True},
            "imGroupOpenDeliverModel": {"robotCode": target.robot_code},
        }
    user = target.sender_staff_id or target.sender_id
    return f"dtv1.card//IM_ROBOT.{user}", {
        "imRobotOpenSpaceModel": {"supportForward": True},
        "imRobotOpenDeliverModel": {"spaceType": "IM_ROBOT"},
    }


class DingTalkReplySurface(ReplySurface):
    def __init__(self, api: DingTalkOpenApi, http: httpx.AsyncClient, config: DingTalkConfig) -> None:
        self._api = api
        self._http = http
        self._config = config
        self._streaming: set[str] = set()  # cards already switched to "inputing"
        self._template, self._content_key = card_template(config)

    def _params(self, text: str, status: str) -> dict[str, Any]:
        return {"cardParamMap": {self._content_key: text, "flowStatus": status}}

    async def open_card(self, run_id: str, target: ReplyTarget) -> None:
        space_id, models = open_space(target)
        body = {
            "cardTemplateId": self._template,
            "outTrackId": run_id,
            "cardData": self._params("", FlowStatus.PROCESSING),
            "callbackType": "STREAM",
            "openSpaceId": space_id,
            "userIdType": 1,
            **models,
        }
        await self._api.call("POST", "/v1.0/card/instances/createAndDeliver", body)

    async def _stream(self, run_id: str, text: str, *, final: bool, error: bool = False) -> None:
        body = {
            "outTrackId": run_id,
            "guid": str(uuid.uuid4()),
            "key": self._content_key,
            "content": text,
            "isFull": True,
            "isFinalize": final,
            "isError": error,
        }
        await self._api.call("PUT", "/v1.0/card/streaming", body)

    async def _set_status(self, run_id: str, text: str | None, status: str) -> None:
        params = self._params(text or "", status)
        if text is None:
            del params["cardParamMap"][self._content_key]
        body = {
            "outTrackId": run_id,
            "cardData": params,
            "cardUpdateOptions": {"updateCardDataByKey": True},
        }
        await self._api.call("PUT", "/v1.0/card/instances", body)

    async def update_card(self, run_id: str, text: str) -> None:
        if run_id not in self._streaming:
            await self._set_status(run_id, None, FlowStatus.INPUTING)
            self._streaming.add(run_id)
        await self._stream(run_id, text, final=False)

    async def close_card(self, run_id: str, text: str, *, failed: bool) -> None:
        self._streaming.discard(run_id)
        await self._stream(run_id, text, final=True, error=failed)
        await self._set_status(run_id, text, FlowStatus.FAILED if failed else FlowStatus.FINISHED)

    async def send_text(self, target: ReplyTarget, text: str) -> None:
        expires = target.session_webhook_expires_at
        if target.session_webhook and (expires is None or expires > datetime.now(UTC)):
            body = {"msgtype": "text", "text": {"content": text}}
            response = await self._http.post(target.session_webhook, json=body)
            data = response.json() if response.content else {}
            if response.is_success and not data.get("errcode"):
                return
            log.warning("session_webhook_failed", status=response.status_code, errcode=data.get("errcode"))
        await self._send_by_robot(target, text)

    async def _send_by_robot(self, target: ReplyTarget, text: str) -> None:
        robot_code = target.robot_code or self._config.robot_code or self._config.client_id
        param = json.dumps({"content": text}, ensure_ascii=False)
        body: dict[str, Any]
        if target.conversation_type == ConversationType.GROUP:
            body = {
                "robotCode": robot_code,
                "openConversationId": target.conversation_id,
                "msgKey": "sampleText",
                "msgParam": param,
            }
            await self._api.call("POST", "/v1.0/robot/groupMessages/send", body)
        elif target.sender_staff_id:
            body = {
                "robotCode": robot_code,
                "userIds": [target.sender_staff_id],
                "msgKey": "sampleText",
                "msgParam": param,
            }
            await self._api.call("POST", "/v1.0/robot/oToMessages/batchSend", body)
        else:
            raise PlatformError("no way left to reach the user: webhook expired and no staff id")
