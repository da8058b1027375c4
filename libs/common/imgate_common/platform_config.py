"""Each platform's channel configuration, shared by admin-api (validation) and the connector.

Adding a platform means one model here and one registry line.
"""

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from imgate_common.fields import HttpUrlStr


class PlatformConfig(BaseModel):
    """Base of the platform configs; `secret_fields` go encrypted into `secrets_enc`."""

    model_config = ConfigDict(extra="forbid")

    platform: ClassVar[str]
    secret_fields: ClassVar[frozenset[str]]

    def split(self) -> tuple[dict[str, Any], dict[str, str]]:
        """(public config, secrets in clear) with unset optional fields left out."""
        public: dict[str, Any] = {}
        secrets: dict[str, str] = {}
        for name, value in self.model_dump(exclude_none=True).items():
            if name in self.secret_fields:
                secrets[name] = value.get_secret_value() if isinstance(value, SecretStr) else value
            else:
                public[name] = value
        return public, secrets


class DingTalkConfig(PlatformConfig):
    platform: ClassVar[str] = "dingtalk"
    secret_fields: ClassVar[frozenset[str]] = frozenset({"client_secret"})

    client_id: str = Field(min_length=1, max_length=200, description="AppKey of the DingTalk app")
    client_secret: SecretStr = Field(min_length=1, description="AppSecret; stored encrypted")
    # Private deployments and imsim stand in for api.dingtalk.com through this override.
    openapi_endpoint: HttpUrlStr | None = None
    robot_code: str | None = Field(None, min_length=1, max_length=200)
    # A channel's own AI card template, and the key its text lives under.
    card_template_id: str | None = Field(None, min_length=1, max_length=200)
    card_content_key: str | None = Field(None, min_length=1, max_length=100)


PLATFORM_CONFIGS: dict[str, type[PlatformConfig]] = {}


def register(config: type[PlatformConfig]) -> None:
    if config.platform in PLATFORM_CONFIGS:
        raise ValueError(f"platform {config.platform!r} registered twice")
    PLATFORM_CONFIGS[config.platform] = config


register(DingTalkConfig)

# What `config` may hold in a request body (for validation order and the OpenAPI schema).
AnyPlatformConfig = DingTalkConfig


def secret_fields(platform: str) -> frozenset[str]:
    config = PLATFORM_CONFIGS.get(platform)
    return config.secret_fields if config else frozenset()
