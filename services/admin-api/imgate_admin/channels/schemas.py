"""Request and response bodies of /api/v1/channels."""

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, Field, JsonValue, SecretStr, ValidationInfo, field_validator

from imgate_admin.destinations import mask_urls
from imgate_admin.schemas import MAX_ID, Name, RequestBody, SafeText, UtcDatetime
from imgate_common.db.models import Channel
from imgate_common.logs import redact_text
from imgate_common.messages import ChannelState, ChannelStatus
from imgate_common.platform_config import USER_MAPPINGS, AnyUserMapping, AutoUserMapping
from imgate_common.platforms import PLATFORM_CONFIGS, AnyPlatformConfig, ConfigWithSecrets, secret_fields
from imgate_common.secrets import MASK

INDICATORS = {
    ChannelState.CONNECTED: "🟢",
    ChannelState.CONNECTING: "🟡",
    ChannelState.DISCONNECTED: "🔴",
    ChannelState.DISABLED: "⚪",
}

AgentId = Annotated[int, Field(ge=1, le=MAX_ID)]
# Card API calls per second for the channel's app; DingTalk starts refusing around 20-50.
CardQps = Annotated[int, Field(ge=1, le=1000)]
Language = Annotated[
    SafeText, Field(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8}){0,2}$", max_length=16, examples=["zh-CN"])
]
JsonObject = dict[str, JsonValue]


class SessionScope(StrEnum):
    CONVERSATION = "conversation"  # one context per chat (a group shares it)
    USER = "user"  # one context per user, even inside a group


def _no_mask(config: ConfigWithSecrets) -> ConfigWithSecrets:
    for name in config.secret_fields:
        value = getattr(config, name, None)
        if isinstance(value, SecretStr) and value.get_secret_value() == MASK:
            raise ValueError(f'{name}: "{MASK}" stands for a stored secret, and a new channel has none')
    return config


class ChannelCreate(RequestBody):
    name: Name
    # Declared before `config`: the config is validated by the model of this platform.
    platform: str = Field(json_schema_extra={"enum": list[JsonValue](sorted(PLATFORM_CONFIGS))})
    config: AnyPlatformConfig
    default_agent_id: AgentId | None = None
    session_scope: SessionScope = SessionScope.CONVERSATION
    user_mapping: AnyUserMapping = Field(default_factory=AutoUserMapping)
    card_qps: CardQps = 20
    language: Language = "zh-CN"
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

    @field_validator("config", "user_mapping")
    @classmethod
    def _secrets_given(cls, value: ConfigWithSecrets) -> ConfigWithSecrets:
        return _no_mask(value)


class ChannelUpdate(RequestBody):
    """Fields left out keep their value.

    `config` and `user_mapping` replace the stored ones whole, except their secret fields: a secret
    sent as "***" or "" (or left out) keeps the stored value; a new value replaces it.
    """

    name: Name | None = None
    platform: str | None = Field(None, description="cannot change; accepted when equal to the stored one")
    config: JsonObject | None = Field(None, description="the platform's config (see POST)")
    default_agent_id: AgentId | None = Field(None, description="null removes the default agent")
    session_scope: SessionScope | None = None
    user_mapping: JsonObject | None = Field(
        None, description='{"mode": "auto" | "ldap" | "http" | "static", …} (see /user-mappings)'
    )
    card_qps: CardQps | None = None
    language: Language | None = None
    enabled: bool | None = None


class ChannelStatusRead(BaseModel):
    channel_id: int
    state: ChannelState
    indicator: str = Field(description="🟢 connected, 🟡 connecting, 🔴 disconnected, ⚪ disabled")
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
    # Counted by connectors that report them (0 otherwise): payloads dropped as unreadable,
    # publishes the bus did not confirm, answers sent as plain text because a card failed.
    messages_malformed: int = 0
    publish_failures: int = 0
    fallback_replies: int = 0

    @classmethod
    def from_status(cls, status: ChannelStatus) -> "ChannelStatusRead":
        fields = status.model_dump(include=set(cls.model_fields) - {"uptime_s", "indicator"})
        # An error text a service reported may quote a URL it called (a session webhook, a signed
        # download link): its credentials read as the mask.
        if status.last_error:
            fields["last_error"] = redact_text(status.last_error, MASK)
        return cls(uptime_s=status.uptime_seconds(), indicator=INDICATORS[status.state], **fields)


def masked(public: dict[str, Any], secret_names: frozenset[str], secrets_enc: str | None) -> dict[str, Any]:
    # The secrets are not decrypted just to be hidden: every secret field reads as the mask
    # whenever secrets are stored. An optional one that is absent then reads as the mask too,
    # which an edit form sends back as "keep": harmless. Credentials inside URLs read as the mask.
    return {**mask_urls(public), **({name: MASK for name in secret_names} if secrets_enc else {})}


class ChannelRead(BaseModel):
    id: int
    name: str
    platform: str
    config: dict[str, Any] = Field(description=f'secret fields read "{MASK}"')
    default_agent_id: int | None
    session_scope: str
    user_mapping: dict[str, Any] = Field(description=f'secret fields read "{MASK}"')
    card_qps: int
    language: str
    enabled: bool
    created_at: UtcDatetime
    updated_at: UtcDatetime
    status: ChannelStatusRead

    @classmethod
    def fields_of(cls, channel: Channel, status: ChannelStatus) -> dict[str, Any]:
        assert channel.id is not None
        mapping_model = USER_MAPPINGS.get(str(channel.user_mapping.get("mode")))
        mapping_secrets = mapping_model.secret_fields if mapping_model else frozenset()
        return {
            "id": channel.id,
            "name": channel.name,
            "platform": channel.platform,
            "config": masked(channel.config, secret_fields(channel.platform), channel.secrets_enc),
            "default_agent_id": channel.default_agent_id,
            "session_scope": channel.session_scope,
            "user_mapping": masked(channel.user_mapping, mapping_secrets, channel.user_mapping_secrets_enc),
            "card_qps": channel.card_qps,
            "language": channel.language,
            "enabled": channel.enabled,
            "created_at": channel.created_at,
            "updated_at": channel.updated_at,
            "status": ChannelStatusRead.from_status(status),
        }

    @classmethod
    def from_row(cls, channel: Channel, status: ChannelStatus) -> "ChannelRead":
        return cls(**cls.fields_of(channel, status))


class ControlOutcome(BaseModel):
    """The connector's answer to the control request this change sent."""

    action: str
    outcome: str = Field(
        description="answered | refused | timeout | no_responders | failed | invalid_reply; "
        "without an answer the connectors' reconcile (every 10 s) still applies the change"
    )
    ok: bool | None = None
    state: ChannelState | None = None
    error: str | None = None
    owner: str | None = None


class ChannelChange(ChannelRead):
    """A channel after a change, with what its connector answered (null: nothing was sent)."""

    control: ControlOutcome | None


DestinationFields = Annotated[
    list[str], Field(description="where the secrets are sent: changing one needs them entered again")
]


class PlatformRead(BaseModel):
    name: str
    secret_fields: list[str]
    destination_fields: DestinationFields
    config_schema: dict[str, Any]


class UserMappingModeRead(BaseModel):
    mode: str
    secret_fields: list[str]
    destination_fields: DestinationFields
    config_schema: dict[str, Any]
