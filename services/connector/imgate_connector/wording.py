"""What the connector itself says in a chat, per channel language, and how long answers split."""

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Wording:
    queued: str  # {position}: messages ahead of this one
    continued: str  # ends a part of an answer that goes on in the next message
    stopped: str  # ends an answer the user stopped
    unreadable: str  # a message the connector could not read at all
    sent_below: str  # closes a card whose answer had to go out as a plain message instead
    undelivered: str  # ends a card whose answer the platform would not take, however long we tried
    media_skipped: str  # a file the connector could not take (media storage full); the text went on


WORDINGS = {
    "zh": Wording(
        queued="排队中，前面还有 {position} 条消息…",
        continued="（未完，见下一条）",
        stopped="(stopped)",
        unreadable="抱歉，这条消息无法读取，请换一种方式重新发送。",
        sent_below="回答已作为单独的消息发送。",
        undelivered="抱歉，回答未能送达，请重新发送您的消息。",
        media_skipped="抱歉，文件存储空间暂时已满，您发送的图片或文件未能接收，请稍后再发送。",
    ),
    "en": Wording(
        queued="Queued: {position} message(s) ahead of this one…",
        continued="(continued in the next message)",
        stopped="(stopped)",
        unreadable="Sorry, I could not read that message. Please send it again another way.",
        sent_below="The answer was sent as a separate message.",
        undelivered="Sorry, the answer could not be delivered. Please send your message again.",
        media_skipped="Sorry, your picture or file could not be taken: file storage is full right now. "
        "Please send it again later.",
    ),
}


def wording_for(language: str | None) -> Wording:
    """zh-CN, zh-TW… → zh; anything unknown → zh (DingTalk's users mostly read Chinese)."""
    return WORDINGS.get((language or "zh").split("-")[0].lower(), WORDINGS["zh"])


FENCE = re.compile(r"^\s*(```+|~~~+)(.*)$", re.MULTILINE)


def _cut(text: str, limit: int) -> int:
    """Where to end a part of at most `limit` characters: a paragraph, else a line, else a
    sentence or a space, in the second half of the window; a hard cut when there is none."""
    window = text[:limit]
    for separator in ("\n\n", "\n", "。", ". ", " "):
        at = window.rfind(separator, limit // 2)
        if at > 0:
            return at + len(separator)
    return limit


def split_long(text: str, limit: int) -> list[str]:
    """Split an answer into parts of at most `limit` characters (markers excepted), at natural
    breaks. A cut inside a code block closes the block and opens it again in the next part.
    Each cut depends only on the text before it, so a growing answer keeps its earlier parts."""
    parts: list[str] = []
    reopen = ""
    rest = text
    while len(reopen) + len(rest) > limit:
        room = max(1, limit - len(reopen))
        at = _cut(rest, room)
        fences = FENCE.findall(reopen + rest[:at])
        if len(fences) % 2:  # an open code block: close it here, reopen it in the next part
            at = _cut(rest, max(1, room - 4))
            fences = FENCE.findall(reopen + rest[:at])
        part, rest = reopen + rest[:at], rest[at:]
        if len(fences) % 2:
            part = part.rstrip("\n") + "\n```"
            reopen = f"```{fences[-1][1].strip()}\n"
        else:
            reopen = ""
        parts.append(part.rstrip())
        rest = rest.lstrip("\n")
    parts.append(reopen + rest)
    return parts
