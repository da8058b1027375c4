"""The platforms a connector can run, by name.

Every platform registered in `imgate_common.platforms` has its package here, named after it,
whose `adapter` module names its adapter class `ADAPTER`; nothing else lists the platforms.
"""

import importlib

from imgate_common.platforms import REGISTRY
from imgate_connector.platforms.base import PlatformAdapter


def adapter_of(platform: str) -> type[PlatformAdapter]:
    """The adapter class of a registered platform, checked to be one and named for it."""
    module = importlib.import_module(f"{__package__}.{platform}.adapter")
    adapter = getattr(module, "ADAPTER", None)
    if not (isinstance(adapter, type) and issubclass(adapter, PlatformAdapter)):
        raise TypeError(f"{module.__name__}.ADAPTER is not a PlatformAdapter class")
    if adapter.name != platform:
        raise ValueError(f"{adapter.__name__} is named {adapter.name!r}, registered as {platform!r}")
    return adapter


ADAPTERS: dict[str, type[PlatformAdapter]] = {str(name): adapter_of(name) for name in REGISTRY}
