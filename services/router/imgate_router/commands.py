"""Slash commands a chat user can send, and the router's own replies in the channel's language."""

from enum import StrEnum


class Command(StrEnum):
    NEW = "/new"
    STOP = "/stop"
    STATUS = "/status"
    HELP = "/help"


# Each reply in every language a channel can speak; the channel's `language` picks one.
REPLIES: dict[str, dict[str, str]] = {
    "zh": {
        "new": "已开始新对话。有什么可以帮助您的？",
        "stop_nothing": "没有正在生成的回答。",
        "queue_full": "前面还有多条消息在排队，请稍后再发送这条消息。",
        "idle": "距上次对话已经很久了，已为您开始新对话。",
        "not_registered": "您还不是本系统的注册用户，请联系管理员开通。",
        "identity_down": "暂时无法确认您的身份（身份服务不可用），请稍后再试。",
        "help": (
            "直接发消息即可与我对话。\n"
            "/new — 开始新对话（忘记之前的上下文）\n"
            "/stop — 停止正在生成的回答\n"
            "/status — 查看当前对话状态\n"
            "/help — 显示本帮助"
        ),
        "status": "智能体：{agent}\n模型：{model}\n当前对话：{age}，{turns} 轮\n排队中的消息：{queued} 条",
        "no_agent": "未配置",
        "no_conversation": "尚未开始",
        "minutes": "已进行 {n} 分钟",
    },
    "en": {
        "new": "Started a new conversation. How can I help you?",
        "stop_nothing": "Nothing is being written right now.",
        "queue_full": "Several messages are already waiting. Please send this one again in a moment.",
        "idle": "It has been a while, so this starts a new conversation.",
        "not_registered": "You are not registered here yet. Please contact your administrator.",
        "identity_down": "We cannot confirm who you are right now (the identity service is down). "
        "Please try again later.",
        "help": (
            "Just send me a message and I will answer.\n"
            "/new — start a new conversation (forget the context)\n"
            "/stop — stop the answer being written\n"
            "/status — show this conversation's status\n"
            "/help — show this help"
        ),
        "status": (
            "Agent: {agent}\nModel: {model}\nConversation: {age}, {turns} turns\nWaiting messages: {queued}"
        ),
        "no_agent": "not configured",
        "no_conversation": "not started yet",
        "minutes": "{n} min old",
    },
}


def reply(key: str, language: str, **fields: object) -> str:
    """The reply `key` in the channel's language (`zh-CN`, `en-US`, … fall back to Chinese)."""
    table = REPLIES.get(language.split("-")[0].lower(), REPLIES["zh"])
    return table[key].format(**fields) if fields else table[key]


def parse_command(text: str) -> Command | None:
    """A command, also after leading @mentions (`@bot /new` in a group); case does not matter."""
    words = [w for w in text.strip().split() if not w.startswith("@")]
    if not words:
        return None
    try:
        return Command(words[0].lower())
    except ValueError:
        return None  # an unknown /word is ordinary text for the agent
