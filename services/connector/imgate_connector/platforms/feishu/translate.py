"""Feishu `im.message.receive_v1` events → `InboundMessage`, one translator per `message_type`.

The sender is the person, not the app: `Sender.id` is the `union_id` (the same person in every
app of the organisation, so two Feishu channels of one company map to one user; `open_id` only
where an event lacks it), `employee_id` the `user_id` (the organisation's own id, sent when the
app may read it), `tenant_id` the `tenant_key`. Answering needs the `open_id`: it is the reply
target's `sender_id`.
"""

import json
import re
from collections.abc import Callable
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
from imgate_common.platforms import FeishuReplyData, Platform

PLATFORM = Platform.FEISHU

Translated = tuple[MessageKind, str, list[Attachment]]

# Where Feishu writes a mention into a message's text: "@_user_1", "@_user_2", ... ("@_all" for
# everyone); the event's `mentions` say whom each key names.
MENTION_KEY = re.compile(r"(@_(?:user_\d+|all))([ \t]*)")


def _text(content: dict[str, Any]) -> Translated:
    return MessageKind.TEXT, str(content.get("text") or ""), []


def _post_element(element: dict[str, Any], images: list[Attachment]) -> str:
    tag = element.get("tag")
    if tag in ("text", "md", "code_block"):
        return str(element.get("text") or "")
    if tag == "a":
        text, href = str(element.get("text") or ""), str(element.get("href") or "")
        return f"[{text}]({href})" if text and href else text or href
    if tag == "at":
        # Received posts name a mention by its key ("@_user_1"), resolved with the text's.
        user = str(element.get("user_id") or "")
        return user if user.startswith("@") else f"@{element.get('user_name') or user}"
    if tag == "img" and element.get("image_key"):
        images.append(Attachment(kind=MessageKind.IMAGE, download_code=str(element["image_key"])))
    return ""


def _post(content: dict[str, Any]) -> Translated:
    """Rich text: its paragraphs as lines, links as markdown, its pictures as attachments."""
    images: list[Attachment] = []
    lines: list[str] = []
    title = str(content.get("title") or "").strip()
    if title:
        lines.append(title)
    for paragraph in content.get("content") or []:
        if isinstance(paragraph, list):
            lines.append("".join(_post_element(e, images) for e in paragraph if isinstance(e, dict)))
    return MessageKind.RICH_TEXT, "\n".join(lines), images


def _image(content: dict[str, Any]) -> Translated:
    key = content.get("image_key")
    return MessageKind.IMAGE, "", [Attachment(kind=MessageKind.IMAGE, download_code=_str(key))]


def _file(content: dict[str, Any]) -> Translated:
    name = str(content.get("file_name") or "file")
    attachment = Attachment(kind=MessageKind.FILE, download_code=_str(content.get("file_key")), name=name)
    return MessageKind.FILE, "", [attachment]


def _audio(content: dict[str, Any]) -> Translated:
    # Feishu sends no transcript with a voice message: nothing to answer (a polite refusal).
    return MessageKind.AUDIO, "", []


def _media(content: dict[str, Any]) -> Translated:
    # A video: nothing a model can read (not fetched); the router's "not supported yet".
    return MessageKind.VIDEO, "", []


TRANSLATORS: dict[str, Callable[[dict[str, Any]], Translated]] = {
    "text": _text,
    "post": _post,
    "image": _image,
    "file": _file,
    "audio": _audio,
    "media": _media,
}


def _str(value: Any) -> str | None:
    return (
        str(value) if isinstance(value, str | int) and not isinstance(value, bool) and value != "" else None
    )


def _ms(value: Any) -> datetime | None:
    try:
        ms = int(value)
        return datetime.fromtimestamp(ms / 1000, UTC) if ms else None
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"{what} is not an object")
    return value


def _maybe_object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _ids(value: Any) -> dict[str, str]:
    """A Feishu user id triple (`open_id`, `union_id`, `user_id`), the absent ones left out."""
    ids = value if isinstance(value, dict) else {}
    return {k: v for k in ("open_id", "union_id", "user_id") if isinstance(v := ids.get(k), str) and v}


def _mentions(
    message: dict[str, Any], text: str, bot_open_id: str | None, group: bool
) -> tuple[dict[str, str], bool, list[Mention]]:
    """(what each mention key in the text becomes, the bot was mentioned, the others who were).

    The bot's own mention is removed; the others read as "@Name". Where the bot's `open_id` is
    not known, the mention a group message starts with is taken for the bot's (a bot in a group
    hears only what mentions it, unless it may read every message)."""
    replace: dict[str, str] = {}
    others: list[Mention] = []
    bot = False
    entries = [
        m for m in message.get("mentions") or [] if isinstance(m, dict) and isinstance(m.get("key"), str)
    ]
    leading = next((m["key"] for m in entries if text.lstrip().startswith(m["key"])), None)
    for mention in entries:
        key, ids = mention["key"], _ids(mention.get("id"))
        is_bot = ids.get("open_id") == bot_open_id if bot_open_id else group and key == leading
        if is_bot:
            bot = True
            replace[key] = ""
            continue
        replace[key] = f"@{mention.get('name') or key[1:]}"
        if ids.get("open_id"):
            others.append(Mention(id=ids["open_id"], employee_id=ids.get("user_id")))
    return replace, bot, others


def _resolve_mentions(text: str, replace: dict[str, str]) -> str:
    """Mention keys replaced; a removed one takes the space after it along."""

    def resolved(found: re.Match[str]) -> str:
        key, space = found.group(1), found.group(2)
        name = replace.get(key, key)
        return name + space if name else ""

    return MENTION_KEY.sub(resolved, text).strip()


def content_of(message: dict[str, Any]) -> dict[str, Any]:
    """A message's `content`: a JSON string in Feishu's events (parsed)."""
    raw = message.get("content")
    try:
        content = json.loads(raw) if isinstance(raw, str | bytes) and raw else {}
    except RecursionError as exc:  # nested deeper than the parser recurses: no real content is
        raise ValueError("message content nested too deep") from exc
    return _object(content, "message content")


def translate(envelope: dict[str, Any], channel_id: int, bot_open_id: str | None = None) -> InboundMessage:
    """Normalize one `im.message.receive_v1` event (the whole envelope: `schema`, `header`,
    `event`); types without a translator come out as UNSUPPORTED. Raises KeyError / ValueError /
    TypeError for a payload that is not a message."""
    header = _maybe_object(envelope.get("header"))
    body = _object(envelope.get("event"), "event")
    message = _object(body.get("message"), "event.message")
    sender = _object(body.get("sender"), "event.sender")
    message_id = _str(message.get("message_id"))
    if message_id is None:
        raise ValueError("message without a message_id")
    platform_type = str(message.get("message_type") or "")
    translator = TRANSLATORS.get(platform_type)
    kind, text, attachments = (
        translator(content_of(message)) if translator else (MessageKind.UNSUPPORTED, "", [])
    )
    group = message.get("chat_type") != "p2p"
    replace, mentions_bot, mentions = _mentions(message, text, bot_open_id, group)
    text = _resolve_mentions(text, replace)
    ids = _ids(sender.get("sender_id"))
    open_id = ids.get("open_id")
    if open_id is None:
        raise ValueError("sender without an open_id")
    person = ids.get("union_id") or open_id
    tenant = _str(sender.get("tenant_key")) or _str(header.get("tenant_key"))
    sent_at = _ms(message.get("create_time"))
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
        sender=Sender(id=person, employee_id=ids.get("user_id"), tenant_id=tenant),
        target=_target(message, channel_id, open_id, ids.get("user_id"), tenant, message_id, sent_at),
        sent_at=sent_at,
        raw=envelope,
    )


def _target(
    message: dict[str, Any],
    channel_id: int,
    open_id: str,
    user_id: str | None,
    tenant: str | None,
    message_id: str,
    sent_at: datetime | None,
) -> ReplyTarget:
    chat_type = _str(message.get("chat_type"))
    return ReplyTarget(
        platform=PLATFORM,
        channel_id=channel_id,
        conversation_id=_str(message.get("chat_id")) or "",
        conversation_type=ConversationType.SINGLE if chat_type == "p2p" else ConversationType.GROUP,
        sender_id=open_id,
        sender_employee_id=user_id,
        platform_data=FeishuReplyData(
            tenant_key=tenant,
            chat_type=chat_type,
            root_id=_str(message.get("root_id")),
            thread_id=_str(message.get("thread_id")),
        ),
        inbound_message_id=message_id,
        sent_at=sent_at,
    )


def reply_target_of(event: Any, channel_id: int) -> ReplyTarget | None:
    """Where to answer an event that could not be translated, if a person (not a system) sent it."""
    try:
        body = _object(_object(event, "envelope").get("event"), "event")
        message = _maybe_object(body.get("message"))
        sender = _object(body.get("sender"), "event.sender")
        ids = _ids(sender.get("sender_id"))
        if "open_id" not in ids or sender.get("sender_type", "user") != "user":
            return None
        message_id = _str(message.get("message_id")) or ""
        if not message_id and not _str(message.get("chat_id")):
            return None
        return _target(
            message,
            channel_id,
            ids["open_id"],
            ids.get("user_id"),
            _str(sender.get("tenant_key")),
            message_id,
            None,
        )
    except (TypeError, ValidationError):
        return None
