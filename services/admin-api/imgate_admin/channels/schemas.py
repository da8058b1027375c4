"""Request and response bodies of /api/v1/channels."""

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationInfo, field_validator

from imgate_admin.schemas import Name, UtcDatetime
from imgate_common.db.models import Channel
from imgate_common.messages import ChannelState, ChannelStatus
from imgate_common.platform_config import PLATFORM_CONFIGS, AnyPlatformConfig, secret_fields
from imgate_common.secrets import MASK


class SessionScope(StrEnum):
    CONVERSATION = "conversation"  # one context per chat (a group shares it)
    USER = "user"  # one context per user, even inside a group


class ChannelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    # Declared before `config`: the config is validated by the model of this platform.
    platform: str = Field(json_schema_extra={"enum": list[JsonValue](sorted(PLATFORM_CONFIGS))})
    config: AnyPlatformConfig
    default_agent_id: int | None = None
    session_scope: SessionScope = SessionScope.CONVERSATION
    enabled: bool = True

    @field_validator("platform")
    @classmethod
    def _known_platform(cls, value: str) -> str:
        if value not in PLATFORM_CONFIGS:
            raise ValueError(f"unsupported platform; expected one of {sorted(PLATFORM_CONFIGS)}")
        return value

    @field_validator("config", mode="before")
    @classmethod
    def _platform_config(cls, value: Any, info: ValidationInfo) -> Any:
        platform = info.data.get("platform")
        if platform is None or not isinstance(value, dict):
            return value  # the platform error is already reported; or not an object at all
        return PLATFORM_CONFIGS[platform].model_validate(value)


class ChannelStatusRead(BaseModel):
    channel_id: int
    state: ChannelState
    owner: str | None
    connected_at: datetime | None
    uptime_s: float | None
    last_error: str | None
    last_error_at: datetime | None
    reconnects: int
    last_inbound_at: datetime | None
    messages_in: int
    replies_out: int
    rate_limit_hits: int

    @classmethod
    def from_status(cls, status: ChannelStatus) -> "ChannelStatusRead":
        return cls(
            uptime_s=status.uptime_seconds(),
            **status.model_dump(include=set(cls.model_fields) - {"uptime_s"}),
        )


class ChannelRead(BaseModel):
    id: int
    name: str
    platform: str
    config: dict[str, Any] = Field(description=f'secret fields read "{MASK}"')
    default_agent_id: int | None
    session_scope: str
    enabled: bool
    created_at: UtcDatetime
    updated_at: UtcDatetime
    status: ChannelStatusRead

    @classmethod
    def from_row(cls, channel: Channel, status: ChannelStatus) -> "ChannelRead":
        assert channel.id is not None
        # The secrets are not decrypted to be hidden: every secret field of the platform reads as
        # the mask whenever secrets are stored (the platforms' secret fields are all required).
        masked = {name: MASK for name in secret_fields(channel.platform)} if channel.secrets_enc else {}
        return cls(
            id=channel.id,
            name=channel.name,
            platform=channel.platform,
            config={**channel.config, **masked},
            default_agent_id=channel.default_agent_id,
            session_scope=channel.session_scope,
            enabled=channel.enabled,
            created_at=channel.created_at,
            updated_at=channel.updated_at,
            status=ChannelStatusRead.from_status(status),
        )
