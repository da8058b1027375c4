"""FastAPI dependencies every platform's routes share."""

from fastapi import Request
from starlette.requests import HTTPConnection

from imsim.platform import SimPlatform
from imsim.settings import Settings


def public_base_url(request: Request) -> str:
    """Where clients reach imsim: the configured public URL, else what the caller used."""
    settings: Settings = request.app.state.settings
    if settings.public_url:
        return settings.public_url.rstrip("/")
    return str(request.base_url).rstrip("/")


def platforms(connection: HTTPConnection) -> dict[str, SimPlatform]:
    registered: dict[str, SimPlatform] = connection.app.state.platforms
    return registered
