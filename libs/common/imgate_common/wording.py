"""Every sentence the gateway itself says in a chat, in each language a channel can speak.

One catalog for the connector, the router and the runner: a channel's `language` (`zh-CN`,
`en-US`, …) picks the table by its first part, and anything unknown reads Chinese, the language
most DingTalk, Feishu and WeCom users read. Failure sentences are keyed `failure.<category>`.
"""

from imgate_common.errors import FailureCategory

DEFAULT_LANGUAGE = "zh"

SENTENCES: dict[str, dict[str, str]] = {
    "zh": {
        # Why a message could not be answered (FailureCategory).
        "failure.not_configured": "本机器人还没有配置智能体，请联系管理员设置。",
        "failure.auth_failed": "AI 服务拒绝了我们的凭据，请联系管理员检查智能体的 API 密钥。",
        "failure.rate_limited": "AI 服务现在很忙，请一分钟后再试。",
        "failure.timed_out": "AI 服务太久没有回答，请重试。",
        "failure.context_too_long": "这段对话已经超出模型能处理的长度。发送 /new 开始新对话。",
        "failure.provider_error": "AI 服务返回了错误，请稍后再试。",
        "failure.unsupported_message": "抱歉，暂时还不能处理这类消息，请发送文字。",
        "failure.misconfigured": "抱歉，本机器人的配置有误，无法处理这条消息。已通知管理员，请稍后再试。",
        "failure.internal": "抱歉，我们这边出了问题，请重试。",
        # The router: commands and what became of a message.
        "new": "已开始新对话。有什么可以帮助您的？",
        "stop_nothing": "没有正在生成的回答。",
        "queue_full": "前面还有多条消息在排队，请稍后再发送这条消息。",
        "rate_limited_user": "您发送消息的速度太快了，这条消息未被处理。请稍等一分钟后再发送。",
        "rate_limited_channel": "本机器人此刻收到的消息太多，这条消息未被处理。请过几分钟再发送。",
        "idle": "距上次对话已经很久了，已为您开始新对话。",
        "not_registered": "您还不是本系统的注册用户，请联系管理员开通。",
        "identity_down": "暂时无法确认您的身份（身份服务不可用），请稍后再试。",
        "gave_up": "抱歉，这条消息多次处理失败，已停止处理。管理员可以在控制台中查看并重新处理。",
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
        # The connector: cards and replies.
        "thinking": "思考中…",
        "queued": "排队中，前面还有 {position} 条消息…",
        "continued": "（未完，见下一条）",
        "stopped": "（已停止）",
        "unreadable": "抱歉，这条消息无法读取，请换一种方式重新发送。",
        "sent_below": "回答已作为单独的消息发送。",
        "undelivered": "抱歉，回答未能送达，请重新发送您的消息。",
        "media_skipped": "抱歉，文件存储空间暂时已满，您发送的图片或文件未能接收，请稍后再发送。",
    },
    "en": {
        "failure.not_configured": "This bot has no AI agent configured yet. "
        "Please ask your administrator to set one up.",
        "failure.auth_failed": "The AI service rejected our credentials. "
        "Please ask your administrator to check the agent's API key.",
        "failure.rate_limited": "The AI service is busy right now. Please try again in a minute.",
        "failure.timed_out": "The AI service took too long to answer. Please try again.",
        "failure.context_too_long": "This conversation has grown too long for the model. "
        "Send /new to start a fresh one.",
        "failure.provider_error": "The AI service returned an error. Please try again later.",
        "failure.unsupported_message": "Sorry, I can't handle this kind of message yet. Please send text.",
        "failure.misconfigured": "Sorry, this bot is not set up correctly and could not handle your "
        "message. Your administrator has been told; please try again later.",
        "failure.internal": "Something went wrong on our side. Please try again.",
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
        "thinking": "Thinking…",
        "queued": "Queued: {position} message(s) ahead of this one…",
        "continued": "(continued in the next message)",
        "stopped": "(stopped)",
        "unreadable": "Sorry, I could not read that message. Please send it again another way.",
        "sent_below": "The answer was sent as a separate message.",
        "undelivered": "Sorry, the answer could not be delivered. Please send your message again.",
        "media_skipped": "Sorry, your picture or file could not be taken: file storage is full right now. "
        "Please send it again later.",
    },
}


def language_of(language: str | None) -> str:
    """The catalog's language for a channel's: `zh-CN`, `zh-TW` → zh; anything unknown → zh."""
    base = (language or DEFAULT_LANGUAGE).split("-")[0].lower()
    return base if base in SENTENCES else DEFAULT_LANGUAGE


def say(key: str, language: str | None, **fields: object) -> str:
    """The sentence `key` in the channel's language, its `{fields}` filled in."""
    sentence = SENTENCES[language_of(language)][key]
    return sentence.format(**fields) if fields else sentence


def failure_sentence(category: FailureCategory, language: str | None) -> str:
    """What a chat user reads when a message of theirs could not be answered, and why."""
    return say(f"failure.{category.value}", language)
