"""Feishu behind the platform interface: the shared sim API and chat page reach it here."""

from collections.abc import Sequence
from typing import Any, ClassVar

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from imsim.platform import AppsPlatform, AppSummary, Injected, NewApp, UserMessage, describe_errors
from imsim.platforms.feishu import NAME, gateway, openapi, sim_api
from imsim.platforms.feishu.dispatcher import EventDispatcher
from imsim.platforms.feishu.errors import FeishuApiError, api_error_handler, invalid_param, render_api_error
from imsim.platforms.feishu.events import MessageType
from imsim.platforms.feishu.faults import FaultConfig
from imsim.platforms.feishu.state import FeishuApp, FeishuState
from imsim.settings import Settings

# The shared message kinds in Feishu's words.
MESSAGE_TYPES: dict[str, MessageType] = {
    "text": "text",
    "rich_text": "post",
    "picture": "image",
    "file": "file",
    "audio": "audio",
    "video": "media",
}


class FeishuPlatform(AppsPlatform[FeishuApp]):
    name: ClassVar[str] = NAME
    title: ClassVar[str] = "Feishu"
    fault_model = FaultConfig
    api_prefixes: ClassVar[tuple[str, ...]] = ("/open-apis/", gateway.ENDPOINT_PATH)

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.state = FeishuState()
        for spec in settings.apps:
            if spec.platform == NAME:
                self.state.upsert_app(spec.client_id, spec.client_secret)
        self.dispatcher: EventDispatcher = EventDispatcher(self.state, tick=settings.timer_tick)

    def routers(self) -> Sequence[APIRouter]:
        return [gateway.router, openapi.router, sim_api.router]

    def exception_handlers(self) -> dict[type[Exception], Any]:
        return {FeishuApiError: api_error_handler}

    def validation_error(self, exc: RequestValidationError) -> Response | None:
        """Feishu answers a malformed body with 400 and code 10003 (invalid param)."""
        return render_api_error(invalid_param(describe_errors(exc.errors())))

    def app_registry(self) -> dict[str, FeishuApp]:
        return self.state.apps

    def add_app(self, app: NewApp) -> AppSummary:
        return self.summary(app.app_id, self.state.upsert_app(app.app_id, app.secret))

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
        sent = await sim_api.send_user_message(body, self.app(app_id), self.dispatcher)
        return Injected(msg_id=sent["message_id"], chat_id=sent["chat_id"], delivered=sent["delivered"])

    def change_faults(self, app_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        # pydantic's ValidationError is a ValueError: the shared sim API answers it with 422.
        return sim_api.change_faults(self.app(app_id), self.dispatcher, changes).model_dump()

    def reset(self, *, faults: bool) -> list[str]:
        for app in self.state.apps.values():
            sim_api.reset_records(app, self.dispatcher, faults=faults)
        return list(self.state.apps)


PLATFORM = FeishuPlatform
