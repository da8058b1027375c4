"""Feishu behind the platform interface: the shared sim API and chat page reach it here."""

from collections.abc import Sequence
from types import TracebackType
from typing import Any, ClassVar, Self

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from imsim.platform import AppSummary, ChatSummary, Injected, NewApp, SimPlatform, UnknownApp, UserMessage
from imsim.platforms.feishu import NAME, gateway, openapi, sim_api
from imsim.platforms.feishu.dispatcher import EventDispatcher
from imsim.platforms.feishu.errors import FeishuApiError, api_error_handler, invalid_param, render_api_error
from imsim.platforms.feishu.events import MessageType
from imsim.platforms.feishu.faults import FaultConfig
from imsim.platforms.feishu.state import FeishuApp, FeishuState
from imsim.settings import Settings
from imsim.timeline import Conversation

# The shared message kinds in Feishu's words.
MESSAGE_TYPES: dict[str, MessageType] = {
    "text": "text",
    "rich_text": "post",
    "picture": "image",
    "file": "file",
    "audio": "audio",
    "video": "media",
}


class FeishuPlatform(SimPlatform):
    name: ClassVar[str] = NAME
    title: ClassVar[str] = "Feishu"
    api_prefixes: ClassVar[tuple[str, ...]] = ("/open-apis/", gateway.ENDPOINT_PATH)

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.state = FeishuState()
        for spec in settings.apps:
            if spec.platform == NAME:
                self.state.upsert_app(spec.client_id, spec.client_secret)
        self.dispatcher = EventDispatcher(self.state, tick=settings.timer_tick)

    async def __aenter__(self) -> Self:
        await self.dispatcher.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.dispatcher.__aexit__(exc_type, exc, tb)

    def routers(self) -> Sequence[APIRouter]:
        return [gateway.router, openapi.router, sim_api.router]

    def exception_handlers(self) -> dict[type[Exception], Any]:
        return {FeishuApiError: api_error_handler}

    def validation_error(self, exc: RequestValidationError) -> Response | None:
        """Feishu answers a malformed body with 400 and code 10003 (invalid param)."""
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'][1:])}: {error['msg']}" for error in exc.errors()
        )
        return render_api_error(invalid_param(problems))

    def fault_kinds(self) -> list[str]:
        return [field for field in FaultConfig.model_fields if field != "seed"]

    def _app(self, app_id: str) -> FeishuApp:
        app = self.state.apps.get(app_id)
        if app is None:
            raise UnknownApp(app_id)
        return app

    @staticmethod
    def _summary(app: FeishuApp) -> AppSummary:
        return AppSummary(
            app_id=app.app_id,
            name=app.name,
            connections=len(app.open_connections()),
            queued=len(app.queued),
            faults_on=app.fault_config.active(),
        )

    def apps(self) -> list[AppSummary]:
        return [self._summary(app) for app in self.state.apps.values()]

    def add_app(self, app: NewApp) -> AppSummary:
        return self._summary(self.state.upsert_app(app.app_id, app.secret))

    async def inject(self, app_id: str, message: UserMessage, base_url: str) -> Injected:
        body = sim_api.MessageBody(
            text=message.text,
            message_type=MESSAGE_TYPES[message.kind],
            file_name=message.file_name,
            sender_id=message.sender_id,
            sender_name=message.sender_name,
            group=message.group,
            mention=message.at_bot,
        )
        sent = await sim_api.send_user_message(body, self._app(app_id), self.dispatcher)
        return Injected(msg_id=sent["message_id"], chat_id=sent["chat_id"], delivered=sent["delivered"])

    def chats(self) -> list[ChatSummary]:
        return [
            ChatSummary.of(app.app_id, chat)
            for app in self.state.apps.values()
            for chat in app.conversations.values()
        ]

    def chat(self, app_id: str, chat_id: str) -> Conversation | None:
        return self._app(app_id).conversations.get(chat_id)

    def counters(self, app_id: str) -> dict[str, Any]:
        return self._app(app_id).counters_json()

    def faults(self, app_id: str) -> dict[str, Any]:
        return self._app(app_id).fault_config.model_dump()

    def change_faults(self, app_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        # pydantic's ValidationError is a ValueError: the shared sim API answers it with 422.
        return sim_api.change_faults(self._app(app_id), self.dispatcher, changes).model_dump()

    def reset(self, *, faults: bool) -> list[str]:
        for app in self.state.apps.values():
            sim_api.reset_records(app, self.dispatcher, faults=faults)
        return list(self.state.apps)


PLATFORM = FeishuPlatform
