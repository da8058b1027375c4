"""Identifiers shaped like Feishu's, stable where Feishu's are stable: a user's open_id is per
app, union_id per developer, chat ids per chat; message, event and card ids are new each time."""

import hashlib
import secrets


def _hex(*parts: str, length: int = 32) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:length]


def open_id(app_id: str, user_id: str) -> str:
    return "ou_" + _hex("open", app_id, user_id)


def union_id(user_id: str) -> str:
    return "on_" + _hex("union", user_id)


def bot_open_id(app_id: str) -> str:
    return "ou_" + _hex("bot", app_id)


def tenant_key(app_id: str) -> str:
    return _hex("tenant", app_id, length=16)


def p2p_chat_id(app_id: str, user_id: str) -> str:
    return "oc_" + _hex("p2p", app_id, user_id)


def group_chat_id(app_id: str, title: str) -> str:
    return "oc_" + _hex("group", app_id, title)


def message_id() -> str:
    return "om_" + secrets.token_hex(16)


def event_id() -> str:
    return secrets.token_hex(16)


def card_id() -> str:
    """CardKit card ids are long decimal numbers."""
    return str(7_000_000_000_000_000_000 + secrets.randbelow(10**18))


def file_key(kind: str) -> str:
    """`img_v3_…` for images, `file_v3_…` for files, audio and video."""
    return ("img_v3_" if kind == "image" else "file_v3_") + secrets.token_hex(12)


def tenant_access_token() -> str:
    return "t-" + secrets.token_hex(20)


def device_id() -> str:
    return secrets.token_hex(8)


def trace_id() -> str:
    return secrets.token_hex(8)
