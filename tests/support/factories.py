"""Small builders for bus models used across test packages."""

import uuid
from typing import Any

from imgate_common.messages import ConversationType, ReplyTarget, RunRequest
from imgate_common.platforms import Platform


def reply_target(**overrides: Any) -> ReplyTarget:
    fields: dict[str, Any] = {
        "platform": Platform.DINGTALK,
        "channel_id": 1,
        "conversation_id": "cid",
        "conversation_type": ConversationType.SINGLE,
        "sender_id": "u1",
        "sender_employee_id": "u1",
        "inbound_message_id": "m1",
    }
    return ReplyTarget(**{**fields, **overrides})


def run_request(conversation_id: str = "c", channel_id: int = 1, **overrides: Any) -> RunRequest:
    """A run request of its own run id, for tests that do not need its rows in a database."""
    fields: dict[str, Any] = {
        "run_id": str(uuid.uuid4()),
        "channel_id": channel_id,
        "conversation_id": conversation_id,
        "agent_id": 1,
        "user_id": 1,
        "user_message_id": 1,
        "text": "hi",
        "target": reply_target(channel_id=channel_id),
    }
    return RunRequest(**{**fields, **overrides})
