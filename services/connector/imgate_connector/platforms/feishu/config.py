"""Feishu protocol constants and what a channel's config means for the connector."""

from pydantic_settings import BaseSettings, SettingsConfigDict

from imgate_common.platforms import FeishuConfig
from imgate_common.platforms.feishu import FEISHU_DOMAIN

# The only event the bot subscribes to: a user's message to it.
MESSAGE_EVENT = "im.message.receive_v1"
# Feishu's own error codes the connector acts on.
TOKEN_INVALID_CODES = frozenset({99991661, 99991663})  # missing / expired tenant_access_token
RATE_LIMITED_CODE = 99991400
TOO_MANY_CONNECTIONS = 1000040350  # handshake autherrcode: the app holds its 50 connections

__all__ = [
    "MESSAGE_EVENT",
    "RATE_LIMITED_CODE",
    "TOKEN_INVALID_CODES",
    "TOO_MANY_CONNECTIONS",
    "FeishuConfig",
    "FeishuEnvironment",
    "domain",
]


class FeishuEnvironment(BaseSettings):
    """What the connector's environment says of Feishu for every channel (prefix `FEISHU_`)."""

    model_config = SettingsConfigDict(env_prefix="FEISHU_", extra="ignore")

    # The open platform of channels without their own `domain`: Lark's, a private deployment,
    # or imsim.
    domain: str = FEISHU_DOMAIN


def domain(config: FeishuConfig, environment: FeishuEnvironment) -> str:
    return (config.domain or environment.domain).rstrip("/")
