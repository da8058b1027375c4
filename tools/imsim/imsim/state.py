"""Kept for callers of the flat layout: DingTalk's state lives in `imsim.platforms.dingtalk.state`,
the platform-neutral timeline in `imsim.timeline`."""

import time  # noqa: F401 - callers patch `imsim.state.time.monotonic`

from imsim.platforms.dingtalk.state import TICKET_TTL, SimApp, SimState

__all__ = ["TICKET_TTL", "SimApp", "SimState"]
