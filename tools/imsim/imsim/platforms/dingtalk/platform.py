"""DingTalk behind the platform interface: the shared sim API and chat page reach it here."""

from collections.abc import Sequence
from types import TracebackType
from typing import Any, ClassVar, Self

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from imsim.platform import (
    AppSummary,
    ChatSummary,
    Injected,
    NewApp,
    SimPlatform,
    UnknownApp,
    UserMessage,
)
from imsim.platforms.dingtalk import NAME, gateway, openapi, sim_api
from imsim.platforms.dingtalk.dispatcher import StreamDispatcher
from imsim.platforms.dingtalk.errors import OpenApiError, open_api_error_handler, render_open_api_error
from imsim.platforms.dingtalk.faults import FaultConfig
from imsim.platforms.dingtalk.state import SimApp, SimState
from imsim.settings import Settings
from imsim.timeline import Conversation


class DingTalkPlatform(SimPlatform):
    name: ClassVar[str] = NAME
    title: ClassVar[str] = "DingTalk"
    api_prefixes: ClassVar[tuple[str, ...]] = ("/v1.0/", "/robot/sendBySession")

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.state = SimState()
        for spec in settings.apps:
            if spec.platform == NAME:
                self.state.upsert_app(spec.client_id, spec.client_secret, robot_code=spec.robot_code)
        self.dispatcher = StreamDispatcher(self.state, tick=settings.timer_tick)

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
        return {OpenApiError: open_api_error_handler}

    def validation_error(self, exc: RequestValidationError) -> Response | None:
        """DingTalk answers a malformed OpenAPI body with 400 `{code, message}`."""
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'][1:])}: {error['msg']}" for error in exc.errors()
        )
        return render_open_api_error(OpenApiError(400, "InvalidParameter", problems))

    def fault_kinds(self) -> list[str]:
        return [field for field in FaultConfig.model_fields if field != "seed"]

    def _app(self, app_id: str) -> SimApp:
        app = self.state.apps.get(app_id)
        if app is None:
            raise UnknownApp(app_id)
        return app

    @staticmethod
    def _summary(app: SimApp) -> AppSummary:
        return AppSummary(
            app_id=app.client_id,
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
            msgtype="richText" if message.kind == "rich_text" else message.kind,
            content={"fileName": message.file_name} if message.kind == "file" and message.file_name else None,
            sender_staff_id=message.sender_id,
            sender_nick=message.sender_name,
            conversation_type="2" if message.group else "1",
            conversation_title=message.group,
            at_bot=message.at_bot,
        )
        sent = await sim_api.send_user_message(body, self._app(app_id), self.state, self.dispatcher, base_url)
        return Injected(msg_id=sent["msg_id"], chat_id=sent["conversation_id"], delivered=sent["delivered"])

    def chats(self) -> list[ChatSummary]:
        return [
            ChatSummary.of(app.client_id, conversation)
            for app in self.state.apps.values()
            for conversation in app.conversations.values()
        ]

    def chat(self, app_id: str, chat_id: str) -> Conversation | None:
        return self._app(app_id).conversations.get(chat_id)

    def counters(self, app_id: str) -> dict[str, Any]:
        return self._app(app_id).counters_json()

    def faults(self, app_id: str) -> dict[str, Any]:
        return self._app(app_id).fault_config.model_dump()

    def change_faults(self, app_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        return sim_api.change_faults(self._app(app_id), self.dispatcher, changes).model_dump()

    def reset(self, *, faults: bool) -> list[str]:
        for app in self.state.apps.values():
            sim_api.reset_records(app, self.state, self.dispatcher, faults=faults)
        return list(self.state.apps)


PLATFORM = DingTalkPlatform
