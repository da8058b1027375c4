"""The platforms a connector can run, by name."""

from imgate_connector.platforms.base import PlatformAdapter
from imgate_connector.platforms.dingtalk.adapter import DingTalkAdapter


def _registry(*adapters: type[PlatformAdapter]) -> dict[str, type[PlatformAdapter]]:
    table: dict[str, type[PlatformAdapter]] = {}
    for adapter in adapters:
        if adapter.name in table:
            raise ValueError(f"two platform adapters are named {adapter.name!r}")
        table[adapter.name] = adapter
    return table


ADAPTERS = _registry(DingTalkAdapter)
