"""Where a Feishu channel's open platform is: its own `domain`, else FEISHU_DOMAIN, else Feishu."""

import pytest

from imgate_common.platforms import FeishuConfig
from imgate_connector.platforms.feishu.adapter import FeishuAdapter
from imgate_connector.platforms.feishu.config import FeishuEnvironment, domain


def config(**fields: str) -> FeishuConfig:
    return FeishuConfig.model_validate({"app_id": "cli_a", "app_secret": "s", **fields})


def test_the_channels_own_domain_comes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEISHU_DOMAIN", "https://open.larksuite.com")
    lark = config(domain="http://127.0.0.1:8790/")
    assert domain(lark, FeishuEnvironment()) == "http://127.0.0.1:8790"
    assert domain(config(), FeishuEnvironment()) == "https://open.larksuite.com"


def test_without_either_it_is_feishu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEISHU_DOMAIN", raising=False)
    assert domain(config(), FeishuEnvironment()) == "https://open.feishu.cn"


def test_the_adapter_names_its_environment_and_a_changed_domain_asks_for_the_secret_again() -> None:
    assert FeishuAdapter.environment is FeishuEnvironment
    assert FeishuConfig.destination_fields == {"domain"} and FeishuConfig.secret_fields == {"app_secret"}
    public, secrets = config(domain="https://open.larksuite.com").split()
    assert public == {"app_id": "cli_a", "domain": "https://open.larksuite.com"} and secrets == {
        "app_secret": "s"
    }
