"""Where a DingTalk channel's OpenAPI is: its own config, else the environment, else DingTalk."""

import pytest

from imgate_common.platforms import DingTalkConfig
from imgate_connector.platforms.dingtalk.config import DingTalkEnvironment, openapi_endpoint


def config(**fields: str) -> DingTalkConfig:
    return DingTalkConfig.model_validate({"client_id": "app", "client_secret": "s", **fields})


def test_the_channels_own_endpoint_comes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DINGTALK_OPENAPI_ENDPOINT", "http://127.0.0.1:8790")
    own = config(openapi_endpoint="http://10.0.0.5:9000/")
    assert openapi_endpoint(own, DingTalkEnvironment()) == "http://10.0.0.5:9000"
    assert openapi_endpoint(config(), DingTalkEnvironment()) == "http://127.0.0.1:8790"


def test_without_either_it_is_dingtalk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DINGTALK_OPENAPI_ENDPOINT", raising=False)
    assert openapi_endpoint(config(), DingTalkEnvironment()) == "https://api.dingtalk.com"
