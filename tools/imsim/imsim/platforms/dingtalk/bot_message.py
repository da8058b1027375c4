"""The bot message (`data` of a CALLBACK frame) DingTalk sends when a user writes to a bot."""

from typing import Any

from imsim import identifiers
from imsim.identifiers import now_ms
from imsim.media import PLACEHOLDERS, Media
from imsim.platforms.dingtalk import identifiers as dingtalk_ids
from imsim.platforms.dingtalk.state import Session, SimApp, SimState
from imsim.timeline import Conversation


def _media_code(state: SimState, kind: str, code: str | None) -> str:
    """Make sure a download code resolves: unknown codes get placeholder bytes."""
    if code is None:
        code = identifiers.download_code()
    if code not in state.media:
        content_type, content = PLACEHOLDERS[kind]
        state.media[code] = Media(content, content_type)
    return code


def complete_content(
    state: SimState, msgtype: str, text: str | None, content: dict[str, Any] | None
) -> dict[str, Any] | None:
    """Fill in what a test left out of `content`, registering media for every download code."""
    content = dict(content or {})
    if msgtype == "text":
        return None
    if msgtype == "richText":
        rich = content.get("richText") or [{"text": text or ""}]
        filled = []
        for part in rich:
            part = dict(part)
            if part.get("type") == "picture":
                part["downloadCode"] = _media_code(state, "picture", part.get("downloadCode"))
                part["pictureDownloadCode"] = _media_code(state, "picture", part.get("pictureDownloadCode"))
            filled.append(part)
        content["richText"] = filled
        return content
    content["downloadCode"] = _media_code(state, msgtype, content.get("downloadCode"))
    if msgtype == "picture":
        content["pictureDownloadCode"] = _media_code(state, "picture", content.get("pictureDownloadCode"))
    elif msgtype == "audio":
        content.setdefault("duration", 3000)
        content.setdefault("recognition", text or "")
    elif msgtype == "file":
        content.setdefault("fileName", "document.txt")
        content.setdefault("fileId", "file" + identifiers.new_token()[:12])
        content.setdefault("spaceId", str(int(identifiers.new_token()[:8], 16)))
    elif msgtype == "video":
        content.setdefault("duration", 5000)
        content.setdefault("videoType", "mp4")
    return content


def timeline_text(msgtype: str, text: str | None, content: dict[str, Any] | None) -> str:
    """What the chat page shows for a user message."""
    if msgtype == "text":
        return text or ""
    content = content or {}
    if msgtype == "richText":
        parts = []
        for part in content.get("richText", []):
            parts.append(part["text"] if "text" in part else "[picture]")
        return "".join(parts)
    if msgtype == "audio":
        return f"[audio] {content.get('recognition', '')}".rstrip()
    if msgtype == "file":
        return f"[file] {content.get('fileName', '')}".rstrip()
    return f"[{msgtype}]"


def build_bot_message(
    *,
    app: SimApp,
    conversation: Conversation,
    session: Session,
    base_url: str,
    msg_id: str,
    msgtype: str,
    text: str | None,
    content: dict[str, Any] | None,
    sender_staff_id: str,
    sender_nick: str,
    at_bot: bool,
    is_admin: bool,
) -> dict[str, Any]:
    group = conversation.type == "2"
    data: dict[str, Any] = {
        "conversationId": conversation.conversation_id,
        "conversationType": conversation.type,
        "msgId": msg_id,
        "msgtype": msgtype,
        "senderStaffId": sender_staff_id,
        "senderId": dingtalk_ids.opaque_user_id("staff", app.corp_id, sender_staff_id),
        "senderNick": sender_nick,
        "senderCorpId": app.corp_id,
        "chatbotUserId": app.chatbot_user_id,
        "chatbotCorpId": app.corp_id,
        "robotCode": app.robot_code,
        "isAdmin": is_admin,
        "isInAtList": at_bot,
        "atUsers": [{"dingtalkId": app.chatbot_user_id}] if group and at_bot else [],
        "sessionWebhook": f"{base_url}/robot/sendBySession?session={session.token}",
        "sessionWebhookExpiredTime": session.expires_at_ms,
        "createAt": now_ms(),
    }
    if msgtype == "text":
        data["text"] = {"content": text or ""}
    else:
        data["content"] = content
    if group:
        data["conversationTitle"] = conversation.title
    return data
