"""FastAPI dependencies every platform's routes share."""

from collections.abc import Mapping
from typing import Protocol, TypeVar

from fastapi import HTTPException, Request
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


class Connected(Protocol):
    @property
    def is_open(self) -> bool: ...


Conn = TypeVar("Conn", bound=Connected)


def chosen_connections(connections: Mapping[str, Conn], connection_id: str | None) -> list[Conn]:
    """What a lever on connections acts on: every open one, or the one named (404 unless open)."""
    if connection_id is None:
        return [c for c in connections.values() if c.is_open]
    connection = connections.get(connection_id)
    if connection is None or not connection.is_open:
        raise HTTPException(404, f"no open connection {connection_id!r}")
    return [connection]
