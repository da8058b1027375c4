"""Response bodies of /api/v1/conversations."""

from pydantic import BaseModel

from imgate_admin.schemas import UtcDatetime
from imgate_common.db.models import Conversation, Message


class ConversationRead(BaseModel):
    id: str
    channel_id: int
    scope_key: str
    user_id: int | None
    opened_at: UtcDatetime
    closed_at: UtcDatetime | None
    last_activity_at: UtcDatetime
    message_count: int

    @classmethod
    def from_row(cls, conversation: Conversation, message_count: int) -> "ConversationRead":
        return cls(
            id=conversation.id,
            channel_id=conversation.channel_id,
            scope_key=conversation.scope_key,
            user_id=conversation.user_id,
            opened_at=conversation.opened_at,
            closed_at=conversation.closed_at,
            last_activity_at=conversation.last_activity_at,
            message_count=message_count,
        )


class MessageRead(BaseModel):
    id: int
    role: str
    content: str
    run_id: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    ttft_ms: int | None
    duration_ms: int | None
    finish_reason: str | None
    created_at: UtcDatetime

    @classmethod
    def from_row(cls, message: Message) -> "MessageRead":
        assert message.id is not None
        return cls(
            id=message.id,
            role=message.role,
            content=message.content,
            run_id=message.run_id,
            prompt_tokens=message.prompt_tokens,
            completion_tokens=message.completion_tokens,
            ttft_ms=message.ttft_ms,
            duration_ms=message.duration_ms,
            finish_reason=message.finish_reason,
            created_at=message.created_at,
        )


class ConversationDetail(ConversationRead):
    """A conversation with its transcript, oldest message first."""

    messages: list[MessageRead]
