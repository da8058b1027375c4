"""What the connector itself says in a chat, per channel language, and how long answers split."""

import re
from dataclasses import dataclass, fields

from imgate_common.wording import SENTENCES, language_of


@dataclass(frozen=True)
class Wording:
    """The connector's sentences of one language (from the catalog in `imgate_common.wording`)."""

    queued: str  # {position}: messages ahead of this one
    continued: str  # ends a part of an answer that goes on in the next message
    stopped: str  # ends an answer the user stopped
    unreadable: str  # a message the connector could not read at all
    sent_below: str  # closes a card whose answer had to go out as a plain message instead
    undelivered: str  # ends a card whose answer the platform would not take, however long we tried
    media_skipped: str  # a file the connector could not take (media storage full); the text went on

    @classmethod
    def of(cls, table: dict[str, str]) -> "Wording":
        return cls(**{f.name: table[f.name] for f in fields(cls)})


WORDINGS = {language: Wording.of(table) for language, table in SENTENCES.items()}


def wording_for(language: str | None) -> Wording:
    """zh-CN, zh-TW… → zh; anything unknown → zh (most of the platforms' users read Chinese)."""
    return WORDINGS[language_of(language)]


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
