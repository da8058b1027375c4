"""The platforms' shared models, one registry line per platform.

A platform brings its name (`Platform`), a module here with its config and reply-target part, and
its line in `REGISTRY`; the unions the bus models and the admin API validate against are built
from the registry.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, TypeAlias, Union

from pydantic import Field

from imgate_common.platforms.base import ConfigWithSecrets, Platform, PlatformConfig, PlatformReplyData
from imgate_common.platforms.dingtalk import DingTalkConfig, DingTalkReplyData
from imgate_common.platforms.feishu import FeishuConfig, FeishuReplyData


@dataclass(frozen=True)
class PlatformModels:
    config: type[PlatformConfig]
    reply_data: type[PlatformReplyData]


def registry_of(*entries: PlatformModels) -> dict[Platform, PlatformModels]:
    registry: dict[Platform, PlatformModels] = {}
    for entry in entries:
        name = entry.config.platform
        if name in registry:
            raise ValueError(f"platform {name!r} registered twice")
        if entry.reply_data.model_fields["platform"].default != name:
            raise ValueError(f"{entry.reply_data.__name__} is not tagged {name!r}")
        registry[name] = entry
    return registry


REGISTRY = registry_of(
    PlatformModels(DingTalkConfig, DingTalkReplyData),
    PlatformModels(FeishuConfig, FeishuReplyData),
)

PLATFORM_CONFIGS: dict[str, type[PlatformConfig]] = {name: e.config for name, e in REGISTRY.items()}

if TYPE_CHECKING:
    # mypy cannot read a union built at run time; the bases say what every member offers.
    AnyPlatformConfig: TypeAlias = PlatformConfig
    AnyReplyData: TypeAlias = PlatformReplyData
else:
    # What `config` may hold in a request body (for validation order and the OpenAPI schema).
    AnyPlatformConfig = Union[tuple(e.config for e in REGISTRY.values())]  # noqa: UP007
    AnyReplyData = Annotated[
        Union[tuple(e.reply_data for e in REGISTRY.values())],  # noqa: UP007
        Field(discriminator="platform"),
    ]


def secret_fields(platform: str) -> frozenset[str]:
    config = PLATFORM_CONFIGS.get(platform)
    return config.secret_fields if config else frozenset()


__all__ = [
    "PLATFORM_CONFIGS",
    "REGISTRY",
    "AnyPlatformConfig",
    "AnyReplyData",
    "ConfigWithSecrets",
    "DingTalkConfig",
    "DingTalkReplyData",
    "FeishuConfig",
    "FeishuReplyData",
    "Platform",
    "PlatformConfig",
    "PlatformModels",
    "PlatformReplyData",
    "secret_fields",
]
