"""What a platform's tests give the contract suite: its simulator, seen from the user's side.

A platform's test package subclasses `PlatformDriver` once (a few lines per method, each a call
to its imsim module) and hands an instance to the contract cases through a `driver` fixture.
"""

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.messages import InboundMessage
from imgate_common.secrets import SecretBox
from imgate_connector.health import ChannelHealth
from imgate_connector.platforms.base import PlatformAdapter

Sink = Callable[[InboundMessage], Awaitable[None]]


async def ignore(message: InboundMessage) -> None:
    return None


@dataclass(frozen=True)
class Answer:
    """One thing the bot showed the user: a card (`final` once it stopped streaming) or a plain
    message (always final)."""

    card: bool
    text: str
    final: bool


class PlatformDriver(ABC):
    """One simulated app of the platform, and adapters connected to it."""

    name: str

    # -- the connection -------------------------------------------------------------------

    @abstractmethod
    async def start(
        self, sink: Sink = ignore, *, wait: bool = True, **settings: Any
    ) -> tuple[PlatformAdapter, ChannelHealth]:
        """An adapter of a channel on this app (connected unless `wait` is False), stopped
        after the test; `settings` override `ConnectorSettings`."""

    @abstractmethod
    async def open_connections(self) -> int:
        """Connections the platform holds open for the app."""

    @abstractmethod
    async def drop_connection(self) -> None:
        """The platform's side of the socket goes away without a word."""

    # -- the user's side ------------------------------------------------------------------

    @abstractmethod
    async def user_sends(self, text: str, sender: str = "pat") -> str:
        """A user's message to the bot; its platform message id."""

    @abstractmethod
    async def user_sends_unreadable(self, sender: str = "pat") -> str:
        """A message frame from a person whose payload cannot be read as a message."""

    @abstractmethod
    async def acked(self, msg_id: str) -> int:
        """How often the platform heard that it may forget the message."""

    @abstractmethod
    async def deliveries(self, msg_id: str) -> int:
        """How often the platform delivered the message (redeliveries included)."""

    @abstractmethod
    async def redeliver(self, msg_id: str) -> None:
        """The platform delivers the message once more, as it does when it missed an ACK."""

    @abstractmethod
    async def answers_to(self, sender: str) -> list[Answer]:
        """What the bot showed `sender`, oldest first."""

    @abstractmethod
    async def answers(self, msg_id: str) -> list[Answer]:
        """What the bot showed in answer to one message."""

    # -- cards ----------------------------------------------------------------------------

    @abstractmethod
    async def card(self, card_id: str) -> Answer | None:
        """The card as the user sees it now; None if the platform never created it."""

    @abstractmethod
    async def cards_created(self) -> int:
        """Cards the platform created for the app."""

    @abstractmethod
    async def set_cards_down(self, down: bool) -> None:
        """The platform's card APIs fail (or work again)."""

    # -- the whole connector --------------------------------------------------------------

    @abstractmethod
    async def add_channel(
        self, db: async_sessionmaker[AsyncSession], box: SecretBox, channel_id: int
    ) -> None:
        """A channel row for this app, as the admin API would store it, its endpoints pointing
        at the simulator."""
