"""The `im.message.receive_v1` event (schema 2.0) Feishu pushes when a user writes to a bot,
with the message content of each type and the media it refers to."""

import json
from typing import Any, Literal

from imsim.identifiers import now_ms
from imsim.media import PLACEHOLDERS, Media
from imsim.platforms.feishu import identifiers as feishu_ids
from imsim.platforms.feishu.state import FeishuApp, MediaItem, User
from imsim.timeline import Conversation

EVENT_TYPE = "im.message.receive_v1"
# The key the first @mention takes in a message's text and `mentions`.
BOT_MENTION_KEY = "@_user_1"

MessageType = Literal["text", "post", "image", "file", "audio", "media", "sticker"]


def _media(app: FeishuApp, message_id: str, kind: str, placeholder: str, file_name: str | None = None) -> str:
    """Register placeholder bytes under a new file key; the resource API serves them."""
    content_type, content = PLACEHOLDERS[placeholder]
    key = feishu_ids.file_key("image" if kind == "image" else "file")
    app.media[key] = MediaItem(message_id, kind, Media(content, content_type, file_name))
    return key


def build_content(
    app: FeishuApp,
    message_id: str,
    message_type: MessageType,
    text: str | None,
    *,
    file_name: str | None,
    mention: bool,
    post: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The message's `content` object (sent as a JSON string) with its media registered."""
    prefix = f"{BOT_MENTION_KEY} " if mention else ""
    if message_type == "text":
        return {"text": prefix + (text or "")}
    if message_type == "post":
        if post is not None:
            return post
        line: list[dict[str, Any]] = []
        if mention:
            line.append({"tag": "at", "user_id": BOT_MENTION_KEY, "user_name": app.name})
        line.append({"tag": "text", "text": text or ""})
        return {"title": "", "content": [line]}
    if message_type == "image":
        return {"image_key": _media(app, message_id, "image", "picture")}
    if message_type == "file":
        name = file_name or "document.txt"
        return {"file_key": _media(app, message_id, "file", "file", name), "file_name": name}
    if message_type == "audio":
        return {"file_key": _media(app, message_id, "file", "audio"), "duration": 3000}
    if message_type == "media":
        name = file_name or "video.mp4"
        return {
            "file_key": _media(app, message_id, "file", "video", name),
            "image_key": _media(app, message_id, "image", "picture"),
            "file_name": name,
            "duration": 5000,
        }
    return {"file_key": _media(app, message_id, "file", "picture")}  # sticker


def post_text(content: dict[str, Any]) -> str:
    """A post's text, one line per paragraph (what the chat page shows)."""
    lines = []
    for paragraph in content.get("content") or []:
        parts = []
        for node in paragraph if isinstance(paragraph, list) else []:
            if not isinstance(node, dict):
                continue
            if node.get("tag") in ("text", "a", "md"):
                parts.append(str(node.get("text", "")))
            elif node.get("tag") == "at":
                parts.append(f"@{node.get('user_name', '')}")
            elif node.get("tag") == "img":
                parts.append("[image]")
        lines.append("".join(parts))
    title = content.get("title")
    return "\n".join(([title] if title else []) + lines)


def timeline_text(message_type: str, text: str | None, content: dict[str, Any]) -> str:
    if message_type == "text":
        return text or ""
    if message_type == "post":
        return post_text(content)
    if message_type == "file":
        return f"[file] {content.get('file_name', '')}".rstrip()
    if message_type == "audio":
        return f"[audio] {text or ''}".rstrip()
    return f"[{message_type}]"


def receive_event(
    *,
    app: FeishuApp,
    chat: Conversation,
    sender: User,
    event_id: str,
    message_id: str,
    message_type: str,
    content: dict[str, Any],
    mention: bool,
    parent_id: str | None = None,
    root_id: str | None = None,
    thread_id: str | None = None,
) -> dict[str, Any]:
    created = str(now_ms())
    message: dict[str, Any] = {
        "message_id": message_id,
        "create_time": created,
        "update_time": created,
        "chat_id": chat.conversation_id,
        "chat_type": "group" if chat.type == "2" else "p2p",
        "message_type": message_type,
        "content": json.dumps(content, ensure_ascii=False),
    }
    if parent_id:
        message["parent_id"] = parent_id
        message["root_id"] = root_id or parent_id
    if thread_id:
        message["thread_id"] = thread_id
    if mention:
        message["mentions"] = [
            {
                "key": BOT_MENTION_KEY,
                "id": {"open_id": app.bot_open_id, "union_id": "", "user_id": ""},
                "name": app.name,
                "tenant_key": app.tenant_key,
            }
        ]
    return {
        "schema": "2.0",
        "header": {
            "event_id": event_id,
            "token": app.verification_token,
            "create_time": created,
            "event_type": EVENT_TYPE,
            "tenant_key": app.tenant_key,
            "app_id": app.app_id,
        },
        "event": {
            "sender": {
                "sender_id": {
                    "open_id": sender.open_id,
                    "union_id": sender.union_id,
                    "user_id": sender.user_id,
                },
                "sender_type": "user",
                "tenant_key": app.tenant_key,
            },
            "message": message,
        },
    }
