"""What every platform package provides: a connection adapter and a reply surface."""

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import ClassVar, Self

import httpx

from imgate_common.channels import ChannelSpec
from imgate_common.messages import InboundMessage, ReplyTarget
from imgate_connector.health import ChannelHealth
from imgate_connector.settings import ConnectorSettings

# Publishes a normalized message durably; returns only once the bus confirmed it, raises otherwise.
InboundSink = Callable[[InboundMessage], Awaitable[None]]


class ReplySurface(ABC):
    """The ways a platform can show an answer: a streaming card, or a plain message."""

    @abstractmethod
    async def open_card(self, run_id: str, target: ReplyTarget) -> None:
        """Show a card in its "thinking…" state."""

    @abstractmethod
    async def update_card(self, run_id: str, text: str) -> None:
        """Replace the card's text with the answer so far."""

    @abstractmethod
    async def close_card(self, run_id: str, text: str, *, failed: bool) -> None:
        """Show the final text and end the card's streaming state."""

    @abstractmethod
    async def send_text(self, target: ReplyTarget, text: str) -> None:
        """Send a plain message into the conversation."""


class PlatformAdapter(ABC):
    """Holds one channel's connection to its platform; an async context manager."""

    name: ClassVar[str]

    def __init__(
        self,
        spec: ChannelSpec,
        settings: ConnectorSettings,
        sink: InboundSink,
        health: ChannelHealth,
        http: httpx.AsyncClient,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.sink = sink
        self.health = health
        self.http = http

    @abstractmethod
    async def start(self) -> None:
        """Begin connecting in the background; returns at once."""

    @abstractmethod
    async def stop(self) -> None:
        """Close the connection; pending work is not ACKed, so the platform redelivers it."""

    @property
    @abstractmethod
    def surface(self) -> ReplySurface: ...

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
