"""FastAPI dependencies that reach the DingTalk objects `create_app` made."""

from typing import TYPE_CHECKING

from fastapi import HTTPException, Request
from starlette.requests import HTTPConnection

from imsim.platforms.dingtalk import NAME
from imsim.platforms.dingtalk.dispatcher import StreamDispatcher
from imsim.platforms.dingtalk.state import SimApp, SimState

if TYPE_CHECKING:
    from imsim.platforms.dingtalk.platform import DingTalkPlatform


def _platform(connection: HTTPConnection) -> "DingTalkPlatform":
    platform: DingTalkPlatform = connection.app.state.platforms[NAME]
    return platform


def sim_state(connection: HTTPConnection) -> SimState:
    return _platform(connection).state


def dispatcher(connection: HTTPConnection) -> StreamDispatcher:
    return _platform(connection).dispatcher


def sim_app(client_id: str, request: Request) -> SimApp:
    app = sim_state(request).apps.get(client_id)
    if app is None:
        raise HTTPException(404, f"unknown app {client_id!r}")
    return app
