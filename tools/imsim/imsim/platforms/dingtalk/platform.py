"""DingTalk behind the platform interface: the shared sim API and chat page reach it here."""

from collections.abc import Sequence
from typing import Any, ClassVar

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from imsim.platform import AppsPlatform, AppSummary, Injected, NewApp, UserMessage, describe_errors
from imsim.platforms.dingtalk import NAME, gateway, openapi, sim_api
from imsim.platforms.dingtalk.dispatcher import StreamDispatcher
from imsim.platforms.dingtalk.errors import OpenApiError, open_api_error_handler, render_open_api_error
from imsim.platforms.dingtalk.faults import FaultConfig
from imsim.platforms.dingtalk.state import SimApp, SimState
from imsim.settings import Settings


class DingTalkPlatform(AppsPlatform[SimApp]):
    name: ClassVar[str] = NAME
    title: ClassVar[str] = "DingTalk"
    fault_model = FaultConfig
    api_prefixes: ClassVar[tuple[str, ...]] = ("/v1.0/", "/robot/sendBySession")

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.state = SimState()
        for spec in settings.apps:
            if spec.platform == NAME:
                self.state.upsert_app(spec.client_id, spec.client_secret, robot_code=spec.robot_code)
        self.dispatcher: StreamDispatcher = StreamDispatcher(self.state, tick=settings.timer_tick)

    def routers(self) -> Sequence[APIRouter]:
        return [gateway.router, openapi.router, sim_api.router]

    def exception_handlers(self) -> dict[type[Exception], Any]:
        return {OpenApiError: open_api_error_handler}

    def validation_error(self, exc: RequestValidationError) -> Response | None:
        """DingTalk answers a malformed OpenAPI body with 400 `{code, message}`."""
        return render_open_api_error(OpenApiError(400, "InvalidParameter", describe_errors(exc.errors())))

    def app_registry(self) -> dict[str, SimApp]:
        return self.state.apps

    def add_app(self, app: NewApp) -> AppSummary:
        return self.summary(app.app_id, self.state.upsert_app(app.app_id, app.secret))

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
        sent = await sim_api.send_user_message(body, self.app(app_id), self.state, self.dispatcher, base_url)
        return Injected(msg_id=sent["msg_id"], chat_id=sent["conversation_id"], delivered=sent["delivered"])

    def change_faults(self, app_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        return sim_api.change_faults(self.app(app_id), self.dispatcher, changes).model_dump()

    def reset(self, *, faults: bool) -> list[str]:
        for app in self.state.apps.values():
            sim_api.reset_records(app, self.state, self.dispatcher, faults=faults)
        return list(self.state.apps)


PLATFORM = DingTalkPlatform
