"""Database tables (SQLModel); Alembic migrations under `migrations/` must match them."""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, UniqueConstraint
from sqlmodel import Field, SQLModel

from imgate_common.sanitise import guard_storage


def utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(**kw: Any) -> Any:
    return Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), **kw))


class Agent(SQLModel, table=True):
    __tablename__ = "agents"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, max_length=100)
    provider: str = Field(max_length=32)  # local | openai
    model: str = Field(default="", max_length=200)
    base_url: str | None = Field(default=None, max_length=500)
    api_key_enc: str | None = None  # Fernet token; never leaves the services in clear
    system_prompt: str = ""
    temperature: float = 0.7
    max_output_tokens: int = 512
    max_turns: int = 20
    max_prompt_tokens: int = 1536
    timeout_s: float = 120.0
    supports_images: bool = False  # pictures go to the model as image input (vision models)
    created_at: datetime = _ts(nullable=False)
    updated_at: datetime = _ts(nullable=False)


class Channel(SQLModel, table=True):
    __tablename__ = "channels"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, max_length=100)
    platform: str = Field(max_length=32)
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    secrets_enc: str | None = None  # Fernet token of a JSON object of the secret config fields
    default_agent_id: int | None = Field(default=None, foreign_key="agents.id")
    session_scope: str = Field(default="conversation", max_length=32)
    # How IM users become our users (mode auto | ldap | erp); secret fields go to the column below.
    user_mapping: dict[str, Any] = Field(
        default_factory=lambda: {"mode": "auto"}, sa_column=Column(JSON, nullable=False)
    )
    user_mapping_secrets_enc: str | None = None  # Fernet token of the mapping's secret fields
    # Card API calls per second this channel's app may make (DingTalk answers 403 QpsLimit past ~20).
    card_qps: int = 20
    language: str = Field(default="zh-CN", max_length=16)  # of the bot's own messages
    enabled: bool = True
    created_at: datetime = _ts(nullable=False)
    updated_at: datetime = _ts(nullable=False)


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(unique=True, max_length=200)
    email: str | None = Field(default=None, max_length=320)
    display_name: str | None = Field(default=None, max_length=200)
    auth_source: str = Field(max_length=32)
    created_at: datetime = _ts(nullable=False)


class ImIdentity(SQLModel, table=True):
    __tablename__ = "im_identities"
    __table_args__ = (UniqueConstraint("platform", "tenant_id", "platform_user_id"),)

    id: int | None = Field(default=None, primary_key=True)
    platform: str = Field(max_length=32)
    tenant_id: str = Field(default="", max_length=200)
    platform_user_id: str = Field(max_length=200)
    user_id: int = Field(foreign_key="users.id", index=True)
    nick: str | None = Field(default=None, max_length=200)
    created_at: datetime = _ts(nullable=False)


class Conversation(SQLModel, table=True):
    __tablename__ = "conversations"

    id: str = Field(primary_key=True, max_length=36)
    channel_id: int = Field(foreign_key="channels.id", index=True)
    scope_key: str = Field(max_length=400, index=True)
    user_id: int | None = Field(default=None, foreign_key="users.id")
    opened_at: datetime = _ts(nullable=False)
    closed_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True))
    last_activity_at: datetime = _ts(nullable=False)


class Message(SQLModel, table=True):
    __tablename__ = "messages"
    __table_args__ = (UniqueConstraint("run_id", "role"),)

    id: int | None = Field(default=None, primary_key=True)
    conversation_id: str = Field(foreign_key="conversations.id", index=True)
    role: str = Field(max_length=16)  # user | assistant
    content: str
    run_id: str | None = Field(default=None, max_length=64)
    platform_message_id: str | None = Field(default=None, max_length=200)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_ms: int | None = None
    duration_ms: int | None = None
    finish_reason: str | None = Field(default=None, max_length=32)
    created_at: datetime = _ts(nullable=False)


class AuditEntry(SQLModel, table=True):
    __tablename__ = "audit_log"

    id: int | None = Field(default=None, primary_key=True)
    actor: str = Field(max_length=200)
    action: str = Field(max_length=64)
    target: str = Field(max_length=200)
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    at: datetime = _ts(nullable=False)


class ApiToken(SQLModel, table=True):
    """A bearer token for the admin API; only its SHA-256 is stored."""

    __tablename__ = "api_tokens"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100)
    token_hash: str = Field(unique=True, max_length=64)
    prefix: str = Field(max_length=16)  # the token's first characters, to tell tokens apart
    created_by: str = Field(max_length=200)
    created_at: datetime = _ts(nullable=False)
    revoked_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


# Rows are cleaned as they are flushed (NUL and other refused characters, column lengths).
guard_storage()
