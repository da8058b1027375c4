"""Settings of one imsim process."""

import os

from pydantic import BaseModel, Field


class AppSpec(BaseModel):
    """A DingTalk app imsim knows from start-up: `CLIENT_ID:CLIENT_SECRET[:ROBOT_CODE]`."""

    client_id: str
    client_secret: str
    robot_code: str | None = None

    @classmethod
    def parse(cls, text: str) -> "AppSpec":
        parts = text.strip().split(":")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"expected CLIENT_ID:CLIENT_SECRET[:ROBOT_CODE], got {text!r}")
        return cls(
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
