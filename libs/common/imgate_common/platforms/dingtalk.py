"""DingTalk's own shared models: the channel config and what answering a DingTalk chat needs."""

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import Field, SecretStr

from imgate_common.fields import HttpUrlStr
from imgate_common.platforms.base import Platform, PlatformConfig, PlatformReplyData


class DingTalkConfig(PlatformConfig):
    platform: ClassVar[Platform] = Platform.DINGTALK
    secret_fields: ClassVar[frozenset[str]] = frozenset({"client_secret"})
    destination_fields: ClassVar[frozenset[str]] = frozenset({"openapi_endpoint"})

    client_id: str = Field(min_length=1, max_length=200, description="AppKey of the DingTalk app")
    client_secret: SecretStr = Field(min_length=1, description="AppSecret; stored encrypted")
    # Private deployments and imsim stand in for api.dingtalk.com through this override.
    openapi_endpoint: HttpUrlStr | None = None
    robot_code: str | None = Field(None, min_length=1, max_length=200)
    # A channel's own AI card template, and the key its text lives under.
    card_template_id: str | None = Field(None, min_length=1, max_length=200)
    card_content_key: str | None = Field(None, min_length=1, max_length=100)


class DingTalkReplyData(PlatformReplyData):
    """The robot that received the message, and the session webhook a plain answer may use."""

    platform: Literal[Platform.DINGTALK] = Platform.DINGTALK
    robot_code: str | None = None
    session_webhook: str | None = None  # valid about 1.5 h after the message
    session_webhook_expires_at: datetime | None = None
