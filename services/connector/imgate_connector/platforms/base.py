"""What every platform package provides: a connection adapter and a reply surface."""

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import ClassVar, Self

import structlog
from pydantic_settings import BaseSettings

from imgate_common.channels import ChannelSpec
from imgate_common.errors import PlatformError
from imgate_common.messages import InboundMessage, ReplyTarget
from imgate_connector.health import ChannelHealth
from imgate_connector.lease import LeaseFence
from imgate_connector.resources import ConnectorResources
from imgate_connector.settings import ConnectorSettings

log = structlog.get_logger()

# Publishes a normalized message durably; returns only once the bus confirmed it, raises otherwise.
# Publishes a message durably; True when the bus already had it (a redelivery).
InboundSink = Callable[[InboundMessage], Awaitable[bool]]
# Told about every message the platform got its ACK for (the renderer opens its card then).
AcceptedHook = Callable[[InboundMessage], None]
# A card's text, or how to read the newest text at the moment the call goes out (an update may
# wait for its turn while the answer grows).
CardText = str | Callable[[], str]


class InboundRejected(Exception):
    """Raised by an `InboundSink` for a message the bus can never carry (too large, not
    encodable): unlike a failed publish, retrying it would fail the same way."""


class CardExists(PlatformError):
    """A card with this id is already there (opened earlier, maybe by another replica)."""


class CardNotFinalized(PlatformError):
    """The card shows its text, but the call that ends its streaming state failed: close it
    again later; sending the text once more would show it twice."""


class CardsUnavailable(PlatformError):
    """Card calls are off for now (they kept failing); answer in plain text instead.
    `retry_in_s`: when card calls will be tried again."""

    def __init__(self, message: str, retry_in_s: float) -> None:
        super().__init__(message)
        self.retry_in_s = retry_in_s


class ReplySurface(ABC):
    """The ways a platform can show an answer: a streaming card, or a plain message.

    Calls marked optional may skip (return False) when the platform's budget is spent; the
    others wait for the budget and retry throttling, and raise when they cannot succeed."""

    # Text a card can show comfortably; longer answers continue in a further card.
    max_card_chars: int = 5000
    # The channel's lease: every call to the platform checks it first (None: not fenced).
    fence: LeaseFence | None = None

    @abstractmethod
    async def open_card(self, card_id: str, target: ReplyTarget) -> None:
        """Show a card in its "thinking…" state; `CardExists` when it is already there."""

    @abstractmethod
    async def show_status(self, card_id: str, text: str, *, since: float | None = None) -> bool:
        """Optional: a line in a card that is still waiting (e.g. queued behind another run).
        `since` (monotonic): when the card last changed; the longest-waiting reader goes first."""

    @abstractmethod
    async def update_card(self, card_id: str, text: CardText, *, since: float | None = None) -> bool:
        """Optional: replace the card's text with the answer so far (`since` as above)."""

    def card_admitted(self) -> bool:
        """Whether a new answer may have a card now; False while the app's card budget has no
        room for one (the answer then goes out as one plain message)."""
        return True

    def withdraw(self, card_id: str) -> None:
        """An optional update of this card still waiting for its turn is not wanted any more."""

    @abstractmethod
    async def close_card(self, card_id: str, text: str, *, failed: bool) -> None:
        """Show the final text and end the card's streaming state."""

    @abstractmethod
    async def post_card(self, card_id: str, target: ReplyTarget, text: str) -> None:
        """A card that is final from the start (the continuation of a long answer);
        `CardNotFinalized` when it shows the text but could not be closed."""

    @abstractmethod
    async def send_text(self, target: ReplyTarget, text: str, *, markdown: bool = False) -> None:
        """Send a plain message into the conversation (mentioning the sender in a group)."""


class PlatformAdapter(ABC):
    """Holds one channel's connection to its platform; an async context manager."""

    name: ClassVar[str]
    # What the connector's environment may say of the platform for all its channels (an
    # endpoint override, say), read by the adapter; None: nothing.
    environment: ClassVar[type[BaseSettings] | None] = None

    def __init__(
        self,
        spec: ChannelSpec,
        settings: ConnectorSettings,
        sink: InboundSink,
        health: ChannelHealth,
        resources: ConnectorResources,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.sink = sink
        self.health = health
        self.resources = resources
        self.on_accepted: AcceptedHook | None = None
        # The channel's lease: no ACK (and no card) once it is no longer ours (None: not fenced).
        self.fence: LeaseFence | None = None

    @abstractmethod
    async def start(self) -> None:
        """Begin connecting in the background; returns at once."""

    @abstractmethod
    async def stop(self, drain_s: float = 0.0) -> None:
        """Close the connection within a second (after `drain_s` for frames being published);
        pending work is not ACKed, so the platform redelivers it."""

    @property
    @abstractmethod
    def surface(self) -> ReplySurface: ...

    @abstractmethod
    async def wait_connected(self, timeout_s: float) -> bool:
        """Wait (up to `timeout_s`) until the connection is up; whether it is."""

    def accepted(self, message: InboundMessage) -> None:
        """Tell the renderer (opens the card); never in the way of the platform's ACK."""
        if self.on_accepted is None:
            return
        try:
            self.on_accepted(message)
        except Exception as exc:
            log.exception("accepted_hook_failed", msg_id=message.message_id, error=str(exc))

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
