"""Identifiers shaped like DingTalk's, stable where DingTalk's are stable."""

import base64
import hashlib
import secrets
import uuid


def _digest(*parts: str) -> bytes:
    return hashlib.sha256("\x1f".join(parts).encode()).digest()


def conversation_id_for_single(client_id: str, staff_id: str) -> str:
    """The 1:1 chat of one user with one app's bot keeps the same id across messages."""
    return "cid" + base64.urlsafe_b64encode(_digest("single", client_id, staff_id)[:18]).decode()


def conversation_id_for_group(client_id: str, title: str) -> str:
    return "cid" + base64.urlsafe_b64encode(_digest("group", client_id, title)[:18]).decode()


def opaque_user_id(*parts: str) -> str:
    """DingTalk's senderId / chatbotUserId: an opaque `$:LWCP_v1:$`-prefixed string."""
    return "$:LWCP_v1:$" + base64.b64encode(_digest("user", *parts)[:24]).decode()


def corp_id(seed: str) -> str:
    return "ding" + _digest("corp", seed)[:16].hex()


def app_id(client_id: str) -> str:
    return str(uuid.UUID(bytes=_digest("app", client_id)[:16]))


def msg_id() -> str:
    """DingTalk's msgId looks like `msg` + base64."""
    return "msg" + base64.b64encode(secrets.token_bytes(18)).decode()
