"""Slash commands a chat user can send."""

from enum import StrEnum


class Command(StrEnum):
    NEW = "/new"
    STOP = "/stop"
    HELP = "/help"


NEW_CONVERSATION_REPLY = "已开始新对话。有什么可以帮助您的？"
STOP_NOTHING_REPLY = "没有正在生成的回答。"
QUEUE_FULL_REPLY = "前面还有多条消息在排队，请稍后再发送这条消息。"
HELP_REPLY = (
    "Send me a message and I will answer.\n"
    "/new — start a new conversation (forget the context)\n"
    "/stop — stop the answer being written\n"
    "/help — show this help"
)


def parse_command(text: str) -> Command | None:
    word = text.strip().split(maxsplit=1)[0].lower() if text.strip() else ""
    try:
        return Command(word)
    except ValueError:
        return None
