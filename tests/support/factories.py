"""Small builders for bus models used across test packages."""

from typing import Any

from imgate_common.messages import ConversationType, ReplyTarget


def reply_target(**overrides: Any) -> ReplyTarget:
    fields: dict[str, Any] = {
        "platform": "dingtalk",
        "channel_id": 1,
        "conversation_id": "cid",
        "conversation_type": ConversationType.SINGLE,
        "sender_id": "u1",
        "sender_staff_id": "u1",
        "inbound_message_id": "m1",
    }
    return ReplyTarget(**{**fields, **overrides})
