"""DingTalk bot message payloads → `InboundMessage`, one translator per `msgtype`."""

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from imgate_common.messages import (
    Attachment,
    ConversationType,
    InboundMessage,
    MessageKind,
    ReplyTarget,
    Sender,
)

PLATFORM = "dingtalk"

Translated = tuple[MessageKind, str, list[Attachment]]


def _text(data: dict[str, Any]) -> Translated:
    return MessageKind.TEXT, (data.get("text") or {}).get("content", "").strip(), []


def _rich_text(data: dict[str, Any]) -> Translated:
    parts: list[str] = []
    images: list[Attachment] = []
    for item in (data.get("content") or {}).get("richText") or []:
        if "text" in item:
            parts.append(item["text"])
        elif item.get("type") == "picture":
            code = item.get("downloadCode") or item.get("pictureDownloadCode")
            images.append(Attachment(kind=MessageKind.IMAGE, download_code=code))
    return MessageKind.RICH_TEXT, "".join(parts).strip(), images


def _audio(data: dict[str, Any]) -> Translated:
    content = data.get("content") or {}
    attachment = Attachment(
        kind=MessageKind.AUDIO,
        download_code=content.get("downloadCode"),
        duration_ms=_int(content.get("duration")),
    )
    return MessageKind.AUDIO, (content.get("recognition") or "").strip(), [attachment]


TRANSLATORS: dict[str, Callable[[dict[str, Any]], Translated]] = {
    "text": _text,
    "richText": _rich_text,
    "audio": _audio,
}


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _ms(value: Any) -> datetime | None:
    ms = _int(value)
    return datetime.fromtimestamp(ms / 1000, UTC) if ms else None


def translate(data: dict[str, Any], channel_id: int, robot_code: str | None) -> InboundMessage:
    """Normalize one bot message; types without a translator come out as UNSUPPORTED."""
    platform_type = str(data.get("msgtype") or "")
    translator = TRANSLATORS.get(platform_type)
    kind, text, attachments = translator(data) if translator else (MessageKind.UNSUPPORTED, "", [])
    staff_id = data.get("senderStaffId") or None
    sender_id = staff_id or data.get("senderId") or ""
    conversation_type = (
        ConversationType.GROUP if str(data.get("conversationType")) == "2" else ConversationType.SINGLE
    )
    message_id = str(data["msgId"])
    return InboundMessage(
        platform=PLATFORM,
        channel_id=channel_id,
        message_id=message_id,
        kind=kind,
        text=text,
        platform_type=platform_type,
        attachments=attachments,
        mentions_bot=bool(data.get("isInAtList")),
        sender=Sender(
            id=sender_id,
            staff_id=staff_id,
            nick=data.get("senderNick"),
            corp_id=data.get("senderCorpId"),
            is_admin=bool(data.get("isAdmin")),
        ),
        conversation_title=data.get("conversationTitle"),
        target=ReplyTarget(
            platform=PLATFORM,
            channel_id=channel_id,
            conversation_id=str(data.get("conversationId") or ""),
            conversation_type=conversation_type,
            sender_id=sender_id,
            sender_staff_id=staff_id,
            robot_code=data.get("robotCode") or robot_code,
            session_webhook=data.get("sessionWebhook"),
            session_webhook_expires_at=_ms(data.get("sessionWebhookExpiredTime")),
            inbound_message_id=message_id,
        ),
        sent_at=_ms(data.get("createAt")),
        raw=data,
    )
