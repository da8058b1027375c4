"""DingTalk protocol constants and what a channel's config means for the connector."""

from pydantic_settings import BaseSettings, SettingsConfigDict

from imgate_common.platforms import DingTalkConfig

BOT_MESSAGE_TOPIC = "/v1.0/im/bot/messages/get"
# The AI markdown card template every DingTalk tenant has; its text lives under `msgContent`.
AI_CARD_TEMPLATE = "382e4302-551d-4880-bf29-a30acfab2e71.schema"
AI_CARD_CONTENT_KEY = "msgContent"

__all__ = [
    "AI_CARD_CONTENT_KEY",
    "AI_CARD_TEMPLATE",
    "BOT_MESSAGE_TOPIC",
    "DingTalkConfig",
    "DingTalkEnvironment",
    "card_template",
    "openapi_endpoint",
]


class DingTalkEnvironment(BaseSettings):
    """What the connector's environment says of DingTalk for every channel (prefix `DINGTALK_`)."""

    model_config = SettingsConfigDict(env_prefix="DINGTALK_", extra="ignore")

    # The OpenAPI of channels without their own `openapi_endpoint`: a private deployment, or
    # imsim. The dingtalk-stream SDK reads the same variable, so one setting points both there.
    openapi_endpoint: str = "https://api.dingtalk.com"


def openapi_endpoint(config: DingTalkConfig, environment: DingTalkEnvironment) -> str:
    return (config.openapi_endpoint or environment.openapi_endpoint).rstrip("/")


def card_template(config: DingTalkConfig) -> tuple[str, str]:
    """(template id, content key) of the channel's AI card."""
    return (
        config.card_template_id or AI_CARD_TEMPLATE,
        config.card_content_key or AI_CARD_CONTENT_KEY,
    )
