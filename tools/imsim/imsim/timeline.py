"""What the user sees in a chat, on any platform: the user's messages and the bot's answers
(plain replies and cards), each answer tied to the message it answers."""

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from imsim.identifiers import now_ms

# Where a message stands on its way to the bot: waiting for a connection, pushed, acknowledged.
MessageStatus = Literal["queued", "sent", "acked"]


class SentMessage(Protocol):
    """A user's message as the platform tracks its delivery to the bot."""

    msg_id: str
    status: MessageStatus
    raw: bool  # given verbatim by a test, possibly not a message at all: never answered
    first_pushed_at: int | None


class CardView(Protocol):
    """A card as the platform models it; the timeline shows its JSON."""

    def to_json(self) -> dict[str, Any]: ...


@dataclass
class UserItem:
    message: SentMessage
    msgtype: str
    text: str
    content: dict[str, Any] | None
    sender_staff_id: str
    sender_nick: str
    at: int = field(default_factory=now_ms)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "user",
            "msg_id": self.message.msg_id,
            "text": self.text,
            "msgtype": self.msgtype,
            "content": self.content,
            "sender_staff_id": self.sender_staff_id,
            "sender_nick": self.sender_nick,
            "status": self.message.status,
            "at": self.at,
        }


# How an answer was tied to the user message it answers: exactly, through a reply address that
# belongs to that message (DingTalk's sessionWebhook) or a reply API naming it (Feishu's), or by
# the conversation's order (see `Conversation.answer_target`).
AnswerLink = Literal["session", "reply", "order"]


@dataclass
class ReplyItem:
    kind: str  # text | markdown
    text: str
    via: str  # the platform's send API, e.g. DingTalk's webhook | batchSend | groupSend
    title: str | None = None
    at_user_ids: list[str] = field(default_factory=list)
    at: int = field(default_factory=now_ms)
    reply_to: str | None = None
    link: AnswerLink | None = None

    def to_json(self) -> dict[str, Any]:
        item: dict[str, Any] = {"kind": self.kind, "text": self.text, "via": self.via}
        if self.title is not None:
            item["title"] = self.title
        item["at_user_ids"] = self.at_user_ids
        item["at"] = self.at
        item["reply_to"] = self.reply_to
        item["link"] = self.link
        return item


@dataclass
class CardItem:
    card: CardView
    at: int = field(default_factory=now_ms)
    reply_to: str | None = None
    link: AnswerLink | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "card",
            **self.card.to_json(),
            "at": self.at,
            "reply_to": self.reply_to,
            "link": self.link,
        }


TimelineItem = UserItem | ReplyItem | CardItem


@dataclass
class Conversation:
    conversation_id: str
    type: Literal["1", "2"]  # 1:1 or group, in DingTalk's words (the first platform's)
    title: str
    staff_id: str | None = None  # the user of a 1:1 chat
    items: list[TimelineItem] = field(default_factory=list)
    created_at: int = field(default_factory=now_ms)

    def to_json(self) -> dict[str, Any]:
        return {
            "conversation_id": self.conversation_id,
            "type": self.type,
            "title": self.title,
            "staff_id": self.staff_id,
            "created_at": self.created_at,
            "items": [item.to_json() for item in self.items],
        }

    def add_answer(self, item: ReplyItem | CardItem, *, sent_at: int) -> None:
        """Append a bot answer sent (a card: created) at `sent_at`, tied to the message it answers."""
        if item.reply_to is None:
            item.reply_to = self.answer_target(sent_at)
            item.link = "order" if item.reply_to else None
        self.items.append(item)

    def answer_target(self, sent_at: int) -> str | None:
        """The message an answer without a reply address of its own (a card, a robot-API message)
        answers.

        Card calls (DingTalk's) name no message, so imsim follows the order of the conversation: the
        oldest message pushed to the bot before the answer that has no answer yet, else (a second
        answer to one message) the latest message pushed before it. Verbatim test payloads are
        never answered. A message the bot never answers would shift later answers one back."""
        pushed = [
            item.message
            for item in self.items
            if isinstance(item, UserItem)
            and not item.message.raw
            and item.message.first_pushed_at is not None
            and item.message.first_pushed_at <= sent_at
        ]
        answered = {item.reply_to for item in self.items if not isinstance(item, UserItem)}
        for message in pushed:
            if message.msg_id not in answered:
                return message.msg_id
        return pushed[-1].msg_id if pushed else None

    def answers_to(self, msg_id: str) -> list[ReplyItem | CardItem]:
        return [i for i in self.items if not isinstance(i, UserItem) and i.reply_to == msg_id]

    def user_item(self, msg_id: str) -> UserItem | None:
        for item in self.items:
            if isinstance(item, UserItem) and item.message.msg_id == msg_id:
                return item
        return None

    def summary_json(self) -> dict[str, Any]:
        """The conversation without its items: what a list of chats shows."""
        last = self.items[-1].to_json() if self.items else None
        last_text = None
        if last is not None:
            # A card's preview, where its platform has one (Feishu: "generating" while it streams).
            last_text = (
                last.get("preview", last.get("content")) if last["kind"] == "card" else last.get("text")
            )
        return {
            "conversation_id": self.conversation_id,
            "type": self.type,
            "title": self.title,
            "staff_id": self.staff_id,
            "created_at": self.created_at,
            "item_count": len(self.items),
            "last_text": last_text,
            "last_at": last["at"] if last else None,
        }
