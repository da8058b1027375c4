"""Slash commands a chat user can send, and the router's own replies in the channel's language."""

from imgate_common.commands import Command, parse_command

__all__ = ["REPLIES", "Command", "parse_command", "reply"]


# Each reply in every language a channel can speak; the channel's `language` picks one.
REPLIES: dict[str, dict[str, str]] = {
    "zh": {
        "new": "已开始新对话。有什么可以帮助您的？",
        "stop_nothing": "没有正在生成的回答。",
        "queue_full": "前面还有多条消息在排队，请稍后再发送这条消息。",
        "rate_limited_user": "您发送消息的速度太快了，这条消息未被处理。请稍等一分钟后再发送。",
        "rate_limited_channel": "本机器人此刻收到的消息太多，这条消息未被处理。请过几分钟再发送。",
        "idle": "距上次对话已经很久了，已为您开始新对话。",
        "not_registered": "您还不是本系统的注册用户，请联系管理员开通。",
        "identity_down": "暂时无法确认您的身份（身份服务不可用），请稍后再试。",
        "gave_up": "抱歉，这条消息多次处理失败，已停止处理。管理员可以在控制台中查看并重新处理。",
        "misconfigured": "抱歉，本机器人的配置有误，无法处理这条消息。已通知管理员，请稍后再试。",
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
        "rate_limited_user": "You are sending messages faster than I can take them, so this one was not "
        "processed. Please wait a minute and send it again.",
        "rate_limited_channel": "This bot is receiving too many messages right now, so this one was not "
        "processed. Please send it again in a few minutes.",
        "idle": "It has been a while, so this starts a new conversation.",
        "not_registered": "You are not registered here yet. Please contact your administrator.",
        "identity_down": "We cannot confirm who you are right now (the identity service is down). "
        "Please try again later.",
        "gave_up": "Sorry, this message failed several times and was set aside. "
        "An administrator can look at it and process it again.",
        "misconfigured": "Sorry, this bot is not set up correctly and could not handle your message. "
        "Your administrator has been told; please try again later.",
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
