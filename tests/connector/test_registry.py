"""The connector finds each registered platform's adapter by the platform's name."""

import sys
from types import ModuleType

import pytest

from imgate_common.platforms import REGISTRY
from imgate_connector.platforms.dingtalk.adapter import DingTalkAdapter
from imgate_connector.platforms.registry import ADAPTERS, adapter_of


def test_every_registered_platform_has_its_adapter() -> None:
    assert set(ADAPTERS) == {str(name) for name in REGISTRY}
    assert ADAPTERS["dingtalk"] is DingTalkAdapter


@pytest.mark.parametrize(
    ("exported", "error"),
    [
        (None, "not a PlatformAdapter"),
        (object, "not a PlatformAdapter"),
        (DingTalkAdapter, "registered as 'fake'"),
    ],
)
def test_a_platform_package_without_its_adapter_is_refused(
    monkeypatch: pytest.MonkeyPatch, exported: type | None, error: str
) -> None:
    package, module = (
        ModuleType("imgate_connector.platforms.fake"),
        ModuleType("imgate_connector.platforms.fake.adapter"),
    )
    if exported is not None:
        module.ADAPTER = exported  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, package.__name__, package)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    with pytest.raises((TypeError, ValueError), match=error):
        adapter_of("fake")
