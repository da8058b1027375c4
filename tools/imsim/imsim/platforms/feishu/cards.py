"""CardKit card entities as Feishu keeps them: card JSON 2.0, elements addressed by
`element_id`, streaming mode, and the per-card `sequence` every update must raise."""

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from imsim.identifiers import now_ms
from imsim.platforms.feishu.errors import (
    CARD_ELEMENT_NOT_FOUND,
    CARD_INVALID,
    SEQUENCE_NOT_INCREASING,
    STREAMING_CLOSED,
    FeishuApiError,
)

# What the chat list shows for a card still streaming, as Feishu's client does.
GENERATING = "[Generating...]"
# Feishu turns a card's streaming mode off by itself this long after it was turned on.
DEFAULT_STREAMING_TIMEOUT = 600.0
# Elements whose text the page shows, and where that text sits in each.
TEXT_TAGS = ("markdown", "plain_text", "div")


def parse_card_json(text: str | None) -> dict[str, Any]:
    """A card JSON 2.0 string as `cards` create and full update take it."""
    try:
        card = json.loads(text or "")
    except ValueError as exc:
        raise FeishuApiError(CARD_INVALID, f"card data is not JSON: {exc}") from exc
    if not isinstance(card, dict):
        raise FeishuApiError(CARD_INVALID, "card data must be a JSON object")
    if card.get("schema") != "2.0":
        raise FeishuApiError(CARD_INVALID, 'CardKit cards need card JSON 2.0 ("schema": "2.0")')
    body = card.get("body", {})
    if not isinstance(body, dict) or not isinstance(body.get("elements", []), list):
        raise FeishuApiError(CARD_INVALID, "card body.elements must be a list")
    return card


def _walk(elements: Any) -> Iterator[dict[str, Any]]:
    """Every element, nested ones (columns, panels, forms) included, in reading order."""
    if not isinstance(elements, list):
        return
    for element in elements:
        if not isinstance(element, dict):
            continue
        yield element
        for key in ("elements", "columns"):
            yield from _walk(element.get(key))


def _text_of(element: dict[str, Any]) -> str | None:
    tag = element.get("tag")
    if tag in ("markdown", "plain_text"):
        return str(element.get("content", ""))
    if tag == "div" and isinstance(element.get("text"), dict):
        return str(element["text"].get("content", ""))
    return None


@dataclass
class CardUpdate:
    at: int
    op: str  # create | content | settings | update
    sequence: int | None
    element_id: str | None = None
    len: int | None = None  # the element's text length after a content op
    extends: bool | None = None  # a content op whose old text is a prefix of the new (typewriter)
    streaming: bool = False  # streaming mode after the op

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "op": self.op,
            "sequence": self.sequence,
            "element_id": self.element_id,
            "len": self.len,
            "extends": self.extends,
            "streaming": self.streaming,
        }


@dataclass
class CardEntity:
    card_id: str
    data: dict[str, Any]
    sequence: int = 0  # the highest sequence applied
    streaming_timeout: float = DEFAULT_STREAMING_TIMEOUT
    created_at: int = field(default_factory=now_ms)
    updates: list[CardUpdate] = field(default_factory=list)
    sent_as: list[str] = field(default_factory=list)  # message ids of the messages that show it
    streaming_since: float | None = None  # monotonic time streaming mode was last turned on

    def __post_init__(self) -> None:
        self._note_streaming(False)
        self.updates.append(CardUpdate(self.created_at, "create", None, streaming=self.streaming_mode))

    def _note_streaming(self, was_on: bool) -> None:
        """Start the streaming clock when the card's streaming flag goes on."""
        flag = bool(self.config.get("streaming_mode", False))
        if flag and not was_on:
            self.streaming_since = time.monotonic()
        elif not flag:
            self.streaming_since = None

    @property
    def config(self) -> dict[str, Any]:
        config = self.data.setdefault("config", {})
        if not isinstance(config, dict):
            config = self.data["config"] = {}
        return config

    @property
    def streaming_mode(self) -> bool:
        """On while the card says so, for at most `streaming_timeout` seconds."""
        if self.streaming_since is None:
            return False
        return time.monotonic() - self.streaming_since < self.streaming_timeout

    @property
    def summary(self) -> str | None:
        summary = self.config.get("summary")
        return str(summary.get("content", "")) if isinstance(summary, dict) else None

    @property
    def title(self) -> str | None:
        header = self.data.get("header")
        title = header.get("title") if isinstance(header, dict) else None
        return str(title.get("content", "")) if isinstance(title, dict) else None

    def elements(self) -> list[dict[str, Any]]:
        body = self.data.get("body")
        return list(_walk(body.get("elements") if isinstance(body, dict) else None))

    @property
    def content(self) -> str:
        """The text of the card's text elements, one paragraph each."""
        texts = [_text_of(e) for e in self.elements()]
        return "\n\n".join(t for t in texts if t)

    @property
    def state(self) -> str:
        """thinking (streaming, no text yet) | writing (streaming) | done (streaming off)."""
        if not self.streaming_mode:
            return "done"
        return "writing" if self.content else "thinking"

    def _element(self, element_id: str) -> dict[str, Any]:
        for element in self.elements():
            if element.get("element_id") == element_id:
                return element
        raise FeishuApiError(CARD_ELEMENT_NOT_FOUND, f"element {element_id!r} is not in card {self.card_id}")

    def check_sequence(self, sequence: int) -> None:
        if sequence <= self.sequence:
            raise FeishuApiError(
                SEQUENCE_NOT_INCREASING,
                f"sequence number compare failed: {sequence} is not above {self.sequence}",
            )

    def set_content(self, element_id: str, content: str, sequence: int) -> None:
        """Stream text into one element: the whole text, as the streaming API takes it."""
        element = self._element(element_id)
        if not self.streaming_mode:
            raise FeishuApiError(STREAMING_CLOSED, f"card {self.card_id} is not in streaming mode")
        self.check_sequence(sequence)
        old = _text_of(element) or ""
        if element.get("tag") == "div" and isinstance(element.get("text"), dict):
            element["text"]["content"] = content
        else:
            element["content"] = content
        self.sequence = sequence
        self.updates.append(
            CardUpdate(
                now_ms(),
                "content",
                sequence,
                element_id,
                len(content),
                content.startswith(old),
                self.streaming_mode,
            )
        )

    def apply_settings(self, settings: dict[str, Any], sequence: int) -> None:
        """`config` (streaming_mode, summary, …) and `card_link` merged into the card."""
        self.check_sequence(sequence)
        was_on = self.streaming_mode
        config = settings.get("config")
        if isinstance(config, dict):
            self.config.update(config)
        self._note_streaming(was_on)
        if "card_link" in settings:
            self.data["card_link"] = settings["card_link"]
        self.sequence = sequence
        self.updates.append(CardUpdate(now_ms(), "settings", sequence, streaming=self.streaming_mode))

    def replace(self, data: dict[str, Any], sequence: int) -> None:
        self.check_sequence(sequence)
        was_on = self.streaming_mode
        self.data = data
        self._note_streaming(was_on)
        self.sequence = sequence
        self.updates.append(CardUpdate(now_ms(), "update", sequence, streaming=self.streaming_mode))

    def preview(self) -> str:
        """What the chat list shows for it."""
        if self.streaming_mode:
            return GENERATING
        return self.summary or self.content

    def to_json(self) -> dict[str, Any]:
        return {
            "card_id": self.card_id,
            "title": self.title,
            "content": self.content,
            "state": self.state,
            "streaming_mode": self.streaming_mode,
            "summary": self.summary,
            "preview": self.preview(),
            "sequence": self.sequence,
            "elements": {
                str(e["element_id"]): _text_of(e) for e in self.elements() if e.get("element_id") is not None
            },
            "updates": [update.to_json() for update in self.updates],
            "created_at": self.created_at,
            "sent_as": list(self.sent_as),
            "data": self.data,
        }
