"""The platforms imsim simulates: every package under `imsim.platforms` whose `platform` module
names its class `PLATFORM`; adding a platform adds its package and nothing else."""

import importlib
import pkgutil

from imsim import platforms
from imsim.platform import SimPlatform


def by_name(*found: type[SimPlatform]) -> dict[str, type[SimPlatform]]:
    """Key platforms by their name; two with one name are a mistake."""
    registry: dict[str, type[SimPlatform]] = {}
    for platform in found:
        if platform.name in registry:
            raise ValueError(f"two simulated platforms are named {platform.name!r}")
        registry[platform.name] = platform
    return registry


def discovered() -> list[type[SimPlatform]]:
    """Each platform package's `PLATFORM`, in the packages' name order."""
    found: list[type[SimPlatform]] = []
    for package in sorted(pkgutil.iter_modules(platforms.__path__), key=lambda m: m.name):
        if not package.ispkg:
            continue
        module = importlib.import_module(f"{platforms.__name__}.{package.name}.platform")
        platform = getattr(module, "PLATFORM", None)
        if not (isinstance(platform, type) and issubclass(platform, SimPlatform)):
            raise TypeError(f"{module.__name__}.PLATFORM is not a SimPlatform class")
        found.append(platform)
    return found


PLATFORMS = by_name(*discovered())
