"""The platforms imsim simulates: one line each."""

from imsim.platform import SimPlatform
from imsim.platforms.dingtalk.platform import DingTalkPlatform


def by_name(*platforms: type[SimPlatform]) -> dict[str, type[SimPlatform]]:
    """Key platforms by their name; two with one name are a mistake."""
    registry: dict[str, type[SimPlatform]] = {}
    for platform in platforms:
        if platform.name in registry:
            raise ValueError(f"two simulated platforms are named {platform.name!r}")
        registry[platform.name] = platform
    return registry


PLATFORMS = by_name(
    DingTalkPlatform,
)
