"""Settings of one imsim process."""

import os
import pkgutil

from pydantic import BaseModel, Field

from imsim import platforms

DEFAULT_PLATFORM = "dingtalk"
APP_SPEC_FORM = "[PLATFORM:]APP_ID:SECRET[:ROBOT_CODE]"


def platform_names() -> set[str]:
    """The simulated platforms' names, from their packages (without importing them)."""
    return {m.name for m in pkgutil.iter_modules(platforms.__path__) if m.ispkg}


class AppSpec(BaseModel):
    """An app imsim knows from start-up: `[PLATFORM:]APP_ID:SECRET[:ROBOT_CODE]`. Without a
    platform it is a DingTalk app (the form from before imsim had other platforms); the robot
    code is DingTalk's alone."""

    platform: str = DEFAULT_PLATFORM
    client_id: str
    client_secret: str
    robot_code: str | None = None

    @classmethod
    def parse(cls, text: str) -> "AppSpec":
        parts = text.strip().split(":")
        platform = DEFAULT_PLATFORM
        if len(parts) > 2 and parts[0] in platform_names():
            platform, parts = parts[0], parts[1:]
        robot_allowed = platform == DEFAULT_PLATFORM
        if len(parts) not in ((2, 3) if robot_allowed else (2,)) or not all(parts):
            raise ValueError(f"expected {APP_SPEC_FORM} (a robot code for DingTalk only), got {text!r}")
        return cls(
            platform=platform,
            client_id=parts[0],
            client_secret=parts[1],
            robot_code=parts[2] if len(parts) == 3 else None,
        )


class Settings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8790
    apps: list[AppSpec] = Field(default_factory=list)
    # When set, sessionWebhook, download and gateway URLs use it instead of the request's Host
    # header (for a gateway that reaches imsim through a proxy or another network name).
    public_url: str | None = None
    # How often the timer loop looks for due pings, redeliveries and closes. 50 ms keeps tests
    # that shrink those intervals to a fraction of a second accurate without busy-looping.
    timer_tick: float = 0.05

    @classmethod
    def apps_from_env(cls, environ: dict[str, str] | None = None) -> list[AppSpec]:
        value = (environ if environ is not None else os.environ).get("IMSIM_APPS", "")
        return [AppSpec.parse(item) for item in value.split(",") if item.strip()]
