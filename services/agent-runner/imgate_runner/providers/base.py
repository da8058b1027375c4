"""The provider interface: stream an answer for a list of chat messages."""

import base64
import contextlib
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from types import TracebackType
from typing import ClassVar, Generic, Self, TypeVar

import structlog

from imgate_common.db.models import Agent

log = structlog.get_logger()

C = TypeVar("C")

# Clients kept open per provider unless the runner's settings say otherwise.
DEFAULT_MAX_CLIENTS = 32


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


class ClientPool(Generic[C]):
    """A provider's API clients (one per endpoint, key and timeout), at most `max_clients`.

    Each agent's key or URL change makes a new client: without a bound they would pile up for
    the process's life. The least recently used is dropped past the cap, and closed as soon as
    no stream still uses it (a stream holds its client through `use`)."""

    def __init__(
        self, close: Callable[[C], Awaitable[object]], max_clients: int = DEFAULT_MAX_CLIENTS
    ) -> None:
        self._close = close
        self.max_clients = max(1, max_clients)
        self._clients: OrderedDict[Hashable, C] = OrderedDict()
        self._users: dict[int, int] = {}  # id(client) → streams using it
        self._retired: dict[int, C] = {}  # dropped from the pool, closed when its last stream ends

    def __len__(self) -> int:
        return len(self._clients)

    @contextlib.asynccontextmanager
    async def use(self, key: Hashable, create: Callable[[], C]) -> AsyncIterator[C]:
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = create()
        self._clients.move_to_end(key)
        self._users[id(client)] = self._users.get(id(client), 0) + 1
        while len(self._clients) > self.max_clients:
            _, oldest = self._clients.popitem(last=False)
            self._retired[id(oldest)] = oldest
            if not self._users.get(id(oldest)):
                await self._retire(oldest)
        try:
            yield client
        finally:
            self._users[id(client)] -= 1
            if not self._users[id(client)]:
                del self._users[id(client)]
                if id(client) in self._retired:
                    await self._retire(client)

    async def _retire(self, client: C) -> None:
        self._retired.pop(id(client), None)
        try:
            await self._close(client)
        except Exception as exc:  # a client that fails to close is dropped all the same
            log.warning("provider_client_close_failed", error=str(exc)[:200])

    async def close_all(self) -> None:
        for client in [*self._clients.values(), *self._retired.values()]:
            await self._retire(client)
        self._clients.clear()
        self._users.clear()
