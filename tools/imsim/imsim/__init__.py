"""imsim: a local IM platform simulator (each platform's servers, a shared sim API, a chat page)."""

from imsim.app import create_app
from imsim.settings import AppSpec, Settings

__all__ = ["AppSpec", "Settings", "create_app"]
