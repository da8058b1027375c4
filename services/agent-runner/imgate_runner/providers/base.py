"""The provider interface: stream an answer for a list of chat messages."""

import base64
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import ClassVar, Self

from imgate_common.db.models import Agent


@dataclass(frozen=True)
class ImageInput:
    content_type: str
    data: bytes

    def base64(self) -> str:
        return base64.b64encode(self.data).decode()


@dataclass(frozen=True)
class ChatMessage:
    role: str  # system | user | assistant
    content: str
    images: tuple[ImageInput, ...] = ()


@dataclass
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None


@dataclass
class Generation:
    """What a provider reports beside the text, filled in as the stream ends."""

    usage: Usage = field(default_factory=Usage)


class ModelProvider(ABC):
    """One per process and provider kind; an async context manager holding its clients."""

    name: ClassVar[str]

    async def initialize(self) -> None:
        """Load models or open clients; called once before the first run."""

    async def shutdown(self) -> None:
        """Release what `initialize` took."""

    @abstractmethod
    def stream(
        self, agent: Agent, api_key: str | None, messages: list[ChatMessage], generation: Generation
    ) -> AsyncIterator[str]:
        """Yield text chunks as the model writes them; raise ProviderError on failure."""

    async def __aenter__(self) -> Self:
        try:
            await self.initialize()
        except BaseException:
            await self.shutdown()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()
