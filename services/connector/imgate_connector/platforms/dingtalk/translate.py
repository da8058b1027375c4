"""DingTalk bot message payloads → `InboundMessage`, one translator per `msgtype`."""

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from imgate_common.messages import (
    Attachment,
    ConversationType,
    InboundMessage,
    Mention,
    MessageKind,
    ReplyTarget,
    Sender,
)
from imgate_common.platforms import DingTalkReplyData, Platform

PLATFORM = Platform.DINGTALK

Translated = tuple[MessageKind, str, list[Attachment]]

# "@Nick" as DingTalk writes a mention into the text: at the start or after a space, ended by a
# space or U+2005 (the narrow space DingTalk clients put after a mention).
MENTION = re.compile(r"(?:^|(?<=\s))@[^\s@\u2005]+[ \t\u2005]*")


def _content(data: dict[str, Any]) -> dict[str, Any]:
    content = data.get("content")
    return content if isinstance(content, dict) else {}


def _text(data: dict[str, Any]) -> Translated:
    text = data.get("text")
    return MessageKind.TEXT, str((text if isinstance(text, dict) else {}).get("content") or ""), []


def _rich_text(data: dict[str, Any]) -> Translated:
    parts: list[str] = []
    images: list[Attachment] = []
    for item in _content(data).get("richText") or []:
        if not isinstance(item, dict):
            continue
        if "text" in item:
            parts.append(str(item["text"]))
        elif item.get("type") == "picture":
            code = item.get("downloadCode") or item.get("pictureDownloadCode")
            images.append(Attachment(kind=MessageKind.IMAGE, download_code=code))
    return MessageKind.RICH_TEXT, "".join(parts), images


def _picture(data: dict[str, Any]) -> Translated:
    content = _content(data)
    code = content.get("downloadCode") or content.get("pictureDownloadCode")
    return MessageKind.IMAGE, "", [Attachment(kind=MessageKind.IMAGE, download_code=code)]


def _audio(data: dict[str, Any]) -> Translated:
    content = _content(data)
    text = str(content.get("recognition") or "")
    if not text.strip():
        return MessageKind.AUDIO, "", []  # nothing recognized: nothing to answer (a polite refusal)
    attachment = Attachment(
        kind=MessageKind.AUDIO,
        download_code=content.get("downloadCode"),
        duration_ms=_int(content.get("duration")),
    )
    # The recognized speech is the message; the recording itself is not fetched.
    return MessageKind.AUDIO, text, [attachment]


def _file(data: dict[str, Any]) -> Translated:
    content = _content(data)
    name = str(content.get("fileName") or "file")
    attachment = Attachment(kind=MessageKind.FILE, download_code=content.get("downloadCode"), name=name)
    return MessageKind.FILE, "", [attachment]


def _video(data: dict[str, Any]) -> Translated:
    # No text and nothing a model can read (video is not fetched): the router answers with its
    # polite "not supported yet". The payload stays in `raw`.
    return MessageKind.VIDEO, "", []


TRANSLATORS: dict[str, Callable[[dict[str, Any]], Translated]] = {
    "text": _text,
    "richText": _rich_text,
    "picture": _picture,
    "audio": _audio,
    "file": _file,
    "video": _video,
}


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: Infinity (Python's json reads it)
        return None


def _ms(value: Any) -> datetime | None:
    ms = _int(value)
    try:
        return datetime.fromtimestamp(ms / 1000, UTC) if ms else None
    except (OverflowError, OSError, ValueError):  # a time outside any calendar: as if it were absent
        return None


def mentions_of(data: dict[str, Any]) -> tuple[bool, list[Mention]]:
    """(the bot was @mentioned, the others who were)."""
    bot = data.get("chatbotUserId")
    others: list[Mention] = []
    bot_listed = False
    for user in data.get("atUsers") or []:
        if not isinstance(user, dict) or not user.get("dingtalkId"):
            continue
        if bot and user["dingtalkId"] == bot:
            bot_listed = True
            continue
        others.append(Mention(id=str(user["dingtalkId"]), employee_id=user.get("staffId") or None))
    return bool(data.get("isInAtList")) or bot_listed, others


def strip_bot_mention(text: str, others: int, bot_names: Sequence[str] = ()) -> str:
    """Remove the bot's own "@name" from a group message.

    DingTalk lists who was mentioned but not where, and some clients already drop the bot's
    mention from the text. So: when the text holds more mentions than people other than the bot
    were mentioned, one of them is the bot's: the one naming the bot if we know its name, else
    the first (where people put it). Mentions of others stay in the text; they carry meaning."""
    found = list(MENTION.finditer(text))
    if len(found) <= others:
        return text.strip()
    names = {f"@{n}".casefold() for n in bot_names if n}
    target = next((m for m in found if m.group().strip().casefold() in names), found[0])
    return (text[: target.start()] + text[target.end() :]).strip()


def translate(
    data: dict[str, Any], channel_id: int, robot_code: str | None, bot_names: Sequence[str] = ()
) -> InboundMessage:
    """Normalize one bot message; types without a translator come out as UNSUPPORTED.
    Raises KeyError / ValueError / TypeError for a payload that is not a bot message."""
    platform_type = str(data.get("msgtype") or "")
    translator = TRANSLATORS.get(platform_type)
    kind, text, attachments = translator(data) if translator else (MessageKind.UNSUPPORTED, "", [])
    staff_id = data.get("senderStaffId") or None
    sender_id = staff_id or data.get("senderId") or ""
    group = str(data.get("conversationType")) == "2"
    mentions_bot, mentions = mentions_of(data)
    text = strip_bot_mention(text, len(mentions), bot_names) if group and mentions_bot else text.strip()
    msg_id = data["msgId"]
    if not isinstance(msg_id, str | int) or isinstance(msg_id, bool):  # null must not become "None"
        raise TypeError(f"msgId is a {type(msg_id).__name__}")
    message_id = str(msg_id)
    if not message_id:
        raise ValueError("empty msgId")
    nick = data.get("senderNick") or None
    return InboundMessage(
        platform=PLATFORM,
        channel_id=channel_id,
        message_id=message_id,
        kind=kind,
        text=text,
        platform_type=platform_type,
        attachments=attachments,
        mentions_bot=mentions_bot,
        mentions=mentions,
        sender=Sender(
            id=sender_id,
            employee_id=staff_id,
            nick=nick,
            tenant_id=data.get("senderCorpId"),
            is_admin=bool(data.get("isAdmin")),
        ),
        conversation_title=data.get("conversationTitle"),
        target=ReplyTarget(
            platform=PLATFORM,
            channel_id=channel_id,
            conversation_id=str(data.get("conversationId") or ""),
            conversation_type=ConversationType.GROUP if group else ConversationType.SINGLE,
            sender_id=sender_id,
            sender_employee_id=staff_id,
            sender_nick=nick,
            platform_data=DingTalkReplyData(
                robot_code=data.get("robotCode") or robot_code,
                session_webhook=data.get("sessionWebhook"),
                session_webhook_expires_at=_ms(data.get("sessionWebhookExpiredTime")),
            ),
            inbound_message_id=message_id,
            sent_at=_ms(data.get("createAt")),
        ),
        sent_at=_ms(data.get("createAt")),
        raw=data,
    )


def reply_target_of(data: Any, channel_id: int, robot_code: str | None) -> ReplyTarget | None:
    """Where to answer a payload that could not be translated, if a person (not a system) sent it."""
    if not isinstance(data, dict):
        return None
    staff_id = data.get("senderStaffId") or None
    sender = staff_id or data.get("senderId")
    webhook = data.get("sessionWebhook")
    if not isinstance(sender, str) or not sender or not (isinstance(webhook, str) or staff_id):
        return None
    try:
        return ReplyTarget(
            platform=PLATFORM,
            channel_id=channel_id,
            conversation_id=str(data.get("conversationId") or ""),
            conversation_type=(
                ConversationType.GROUP
                if str(data.get("conversationType")) == "2"
                else ConversationType.SINGLE
            ),
            sender_id=sender,
            sender_employee_id=staff_id if isinstance(staff_id, str) else None,
            platform_data=DingTalkReplyData(
                robot_code=data.get("robotCode") or robot_code,
                session_webhook=webhook if isinstance(webhook, str) else None,
            ),
            inbound_message_id=str(data.get("msgId") or ""),
        )
    except ValidationError:
        return None
