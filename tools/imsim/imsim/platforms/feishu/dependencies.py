"""FastAPI dependencies that reach the Feishu objects `create_app` made."""

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from fastapi import HTTPException, Request
from pydantic import BaseModel, ValidationError
from starlette.requests import HTTPConnection

from imsim.platform import describe_errors
from imsim.platforms.feishu import NAME
from imsim.platforms.feishu.dispatcher import EventDispatcher
from imsim.platforms.feishu.errors import invalid_param
from imsim.platforms.feishu.state import FeishuApp, FeishuState

if TYPE_CHECKING:
    from imsim.platforms.feishu.platform import FeishuPlatform


def _platform(connection: HTTPConnection) -> "FeishuPlatform":
    platform: FeishuPlatform = connection.app.state.platforms[NAME]
    return platform


def feishu_state(connection: HTTPConnection) -> FeishuState:
    return _platform(connection).state


def dispatcher(connection: HTTPConnection) -> EventDispatcher:
    return _platform(connection).dispatcher


def feishu_app(app_id: str, connection: HTTPConnection) -> FeishuApp:
    app = feishu_state(connection).apps.get(app_id)
    if app is None:
        raise HTTPException(404, f"unknown app {app_id!r}")
    return app


Body = TypeVar("Body", bound=BaseModel)


def json_body(model: type[Body]) -> Callable[[Request], Awaitable[Body]]:
    """The request's JSON body as `model`, whatever its Content-Type says (Feishu reads JSON
    without one, and lark-oapi's token call sends none); a bad body is Feishu's 10003."""

    async def read(request: Request) -> Body:
        try:
            return model.model_validate_json(await request.body() or b"{}")
        except ValidationError as exc:
            raise invalid_param(describe_errors(exc.errors(), skip=0)) from exc

    return read
