"""imsim: a local DingTalk simulator (Stream gateway, card OpenAPI, sim API, chat page)."""

from imsim.app import create_app
from imsim.settings import AppSpec, Settings

__all__ = ["AppSpec", "Settings", "create_app"]
