"""FastAPI dependencies that reach the objects `create_app` made."""

from fastapi import HTTPException, Request
from starlette.requests import HTTPConnection

from imsim.dispatcher import StreamDispatcher
from imsim.settings import Settings
from imsim.state import SimApp, SimState


def sim_state(connection: HTTPConnection) -> SimState:
    state: SimState = connection.app.state.sim
    return state


def dispatcher(connection: HTTPConnection) -> StreamDispatcher:
    stream: StreamDispatcher = connection.app.state.dispatcher
    return stream


def public_base_url(request: Request) -> str:
    """Where clients reach imsim: the configured public URL, else what the caller used."""
    settings: Settings = request.app.state.settings
    if settings.public_url:
        return settings.public_url.rstrip("/")
    return str(request.base_url).rstrip("/")


def sim_app(client_id: str, request: Request) -> SimApp:
    app = sim_state(request).apps.get(client_id)
    if app is None:
        raise HTTPException(404, f"unknown app {client_id!r}")
    return app
