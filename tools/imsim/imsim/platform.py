"""What a simulated platform provides, so the shared sim API and chat page can serve any of them."""

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence, Sized
from types import TracebackType
from typing import Any, ClassVar, Generic, Literal, Protocol, Self, TypeVar

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field, model_validator

from imsim.settings import Settings
from imsim.timeline import Conversation
from imsim.timers import TimerLoop


class UnknownApp(LookupError):
    """No app with this id on this platform."""


class UserMessage(BaseModel):
    """A user's message in the platform's own words left out: who writes what, where."""

    text: str | None = None
    kind: Literal["text", "rich_text", "audio", "picture", "file", "video"] = Field(
        "text",
        description=(
            "rich_text: `text` as rich text (DingTalk richText, Feishu post); audio: `text` is the"
            " speech recognition where the platform sends one; file: `file_name` names it"
        ),
    )
    file_name: str | None = None
    sender_id: str = "user001"
    sender_name: str = "Demo User"
    group: str | None = Field(None, description="the group's title; null: a 1:1 chat with the bot")
    at_bot: bool = True

    @model_validator(mode="after")
    def _check(self) -> "UserMessage":
        if self.kind in ("text", "rich_text") and self.text is None:
            raise ValueError(f"a {self.kind} message needs `text`")
        return self


class NewApp(BaseModel):
    app_id: str = Field(min_length=1)
    secret: str = Field(min_length=1)


class Injected(BaseModel):
    msg_id: str
    chat_id: str
    delivered: bool  # pushed to the bot at once; false: queued until it connects


class AppSummary(BaseModel):
    """One app (bot) of a platform, as the chat page's picker and status pill show it."""

    app_id: str
    name: str
    connections: int
    queued: int
    faults_on: list[str] = Field(description="the faults switched on, in words")


class ChatSummary(BaseModel):
    app_id: str
    chat_id: str
    type: Literal["1", "2"]  # 1:1 or group
    title: str
    user_id: str | None  # the user of a 1:1 chat
    last_text: str | None
    last_at: int | None
    item_count: int

    @classmethod
    def of(cls, app_id: str, conversation: Conversation) -> "ChatSummary":
        summary = conversation.summary_json()
        return cls(
            app_id=app_id,
            chat_id=conversation.conversation_id,
            type=conversation.type,
            title=conversation.title,
            user_id=conversation.staff_id,
            last_text=summary["last_text"],
            last_at=summary["last_at"],
            item_count=summary["item_count"],
        )


def tune_app(app: object, **tunables: Any) -> None:
    """Set an app's run-time knobs; None leaves a knob as it is, an unknown one is an error."""
    for key, value in tunables.items():
        if value is None:
            continue
        if not hasattr(app, key):
            raise AttributeError(key)
        setattr(app, key, value)


class SimPlatform(ABC):
    """One simulated IM platform: the servers it imitates (mounted as routers) and the user's side
    of it (apps, chats, faults). An async context manager: `create_app` enters every platform in
    its lifespan, for timers such as pings and redeliveries."""

    name: ClassVar[str]  # the registry key and the URL segment under /sim/platforms
    title: ClassVar[str]  # what the chat page calls it
    # Paths of the platform's own API: calls to them are recorded per app, and a malformed body
    # there is answered the platform's way (`validation_error`).
    api_prefixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    @abstractmethod
    def routers(self) -> Sequence[APIRouter]:
        """The platform's servers (HTTP and websocket endpoints) and its own /sim routes."""

    def exception_handlers(self) -> dict[type[Exception], Any]:
        """Handlers of the platform's error types, installed on the whole app."""
        return {}

    def validation_error(self, exc: RequestValidationError) -> Response | None:
        """The answer to a malformed body on an `api_prefixes` path; None: FastAPI's 422."""
        return None

    @abstractmethod
    def fault_kinds(self) -> list[str]:
        """The names of the faults `change_faults` takes."""

    @abstractmethod
    def apps(self) -> list[AppSummary]: ...

    @abstractmethod
    def add_app(self, app: NewApp) -> AppSummary:
        """Create an app (a bot with its credentials), or give an existing one this secret."""

    @abstractmethod
    async def inject(self, app_id: str, message: UserMessage, base_url: str) -> Injected:
        """The user sends `message` to the app's bot. Raises UnknownApp."""

    @abstractmethod
    def chats(self) -> list[ChatSummary]:
        """Every chat of every app, oldest first."""

    @abstractmethod
    def chat(self, app_id: str, chat_id: str) -> Conversation | None:
        """One chat with what the user sees in it. Raises UnknownApp."""

    @abstractmethod
    def counters(self, app_id: str) -> dict[str, Any]:
        """Raises UnknownApp."""

    @abstractmethod
    def faults(self, app_id: str) -> dict[str, Any]:
        """The app's fault configuration. Raises UnknownApp."""

    @abstractmethod
    def change_faults(self, app_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Switch faults on or off (fields not given stay); the new configuration. Raises UnknownApp
        and ValueError for a configuration the platform refuses."""

    @abstractmethod
    def reset(self, *, faults: bool) -> list[str]:
        """Forget every app's records and counters (`faults`: its faults too); the app ids."""


def describe_errors(errors: Sequence[Mapping[str, Any]], *, skip: int = 1) -> str:
    """Validation errors in one line, `field.path: message; …`, leaving out the first `skip`
    parts of each path (FastAPI's `body`)."""
    return "; ".join(f"{'.'.join(str(p) for p in error['loc'][skip:])}: {error['msg']}" for error in errors)


class FaultSettings(Protocol):
    def active(self) -> list[str]: ...

    def model_dump(self) -> dict[str, Any]: ...


class PlatformApp(Protocol):
    """An app as a platform keeps it, as far as the shared sim API reads it."""

    name: str
    conversations: dict[str, Conversation]

    @property
    def fault_config(self) -> FaultSettings: ...

    @property
    def queued(self) -> Sized: ...

    def open_connections(self) -> Sized: ...

    def counters_json(self) -> dict[str, Any]: ...


App = TypeVar("App", bound=PlatformApp)


class AppsPlatform(SimPlatform, Generic[App]):
    """A platform whose apps sit in one dict by app id, with a dispatcher whose timers run while
    imsim does: the shared API's reads and the lifespan, done once."""

    dispatcher: TimerLoop
    fault_model: ClassVar[type[BaseModel]]  # the app's fault configuration; `seed` is no fault

    def fault_kinds(self) -> list[str]:
        return [field for field in self.fault_model.model_fields if field != "seed"]

    async def __aenter__(self) -> Self:
        await self.dispatcher.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.dispatcher.__aexit__(exc_type, exc, tb)

    @abstractmethod
    def app_registry(self) -> dict[str, App]:
        """Every app, by the id the shared sim API names it by."""

    def app(self, app_id: str) -> App:
        app = self.app_registry().get(app_id)
        if app is None:
            raise UnknownApp(app_id)
        return app

    @staticmethod
    def summary(app_id: str, app: App) -> AppSummary:
        return AppSummary(
            app_id=app_id,
            name=app.name,
            connections=len(app.open_connections()),
            queued=len(app.queued),
            faults_on=app.fault_config.active(),
        )

    def apps(self) -> list[AppSummary]:
        return [self.summary(app_id, app) for app_id, app in self.app_registry().items()]

    def chats(self) -> list[ChatSummary]:
        return [
            ChatSummary.of(app_id, chat)
            for app_id, app in self.app_registry().items()
            for chat in app.conversations.values()
        ]

    def chat(self, app_id: str, chat_id: str) -> Conversation | None:
        return self.app(app_id).conversations.get(chat_id)

    def counters(self, app_id: str) -> dict[str, Any]:
        return self.app(app_id).counters_json()

    def faults(self, app_id: str) -> dict[str, Any]:
        return self.app(app_id).fault_config.model_dump()
