"""Hypothesis strategies for DingTalk Stream frames and the bot message payloads they carry.

Well-formed values follow the documented fields (and the recorded fixtures); the malformed ones
drop fields, give them the wrong types, add unknown ones, and bring the strings that break naive
code: lone surrogates, NUL, right-to-left marks, DingTalk's U+2005 after a mention, huge and
deeply nested values, numbers out of every range.
"""

import json
from typing import Any

from hypothesis import strategies as st

from imgate_connector.platforms.dingtalk.config import BOT_MESSAGE_TOPIC

FRAME_TYPES = ("SYSTEM", "CALLBACK", "EVENT")
SYSTEM_TOPICS = ("ping", "disconnect", "KEEPALIVE")
OTHER_TOPICS = ("/v1.0/card/instances/callback", "/v1.0/graph/api/invoke", "chat_update_title", "")
MSGTYPES = ("text", "richText", "picture", "audio", "file", "video")
UNKNOWN_MSGTYPES = ("interactiveCard", "markdown", "chatRecord", "TEXT", "")
BOT_USER_ID = "$:LWCP_v1:$Cxz2Cs5XAJ8wQ5nn3WEnVg=="
BOT_NAME = "helper"
# Every top-level field a bot message is documented to carry (and a few it really does).
PAYLOAD_FIELDS = (
    "conversationId",
    "conversationType",
    "msgId",
    "msgtype",
    "text",
    "content",
    "senderStaffId",
    "senderId",
    "senderNick",
    "senderCorpId",
    "chatbotUserId",
    "chatbotCorpId",
    "robotCode",
    "isAdmin",
    "isInAtList",
    "atUsers",
    "sessionWebhook",
    "sessionWebhookExpiredTime",
    "createAt",
    "conversationTitle",
)

ODD_PIECES = (
    " ",
    "\t",
    "\n",
    "\u2005",
    "\u3000",
    "@",
    f"@{BOT_NAME}",
    f"@{BOT_NAME}\u2005",
    "@Alice ",
    "a@b.com",
    "\x00",
    "\ud83d",  # half an emoji: a client that cut a string in the middle of a surrogate pair
    "\udc00",
    "\U0001f600",
    "\u202e",
    "\ufeff",
    "张三",
    "明天天气怎么样",
    '"',
    "\\",
    "{}",
    "null",
    "/new",
)

# Timestamps (ms) and durations: sane ones, and every way a number can be out of range.
ODD_NUMBERS = (
    0,
    -1,
    1,
    2**31,
    2**63,
    10**16,
    10**20,
    -(10**18),
    1e300,
    -1e300,
    float("inf"),
    float("-inf"),
    float("nan"),
    0.5,
)


def clean_texts(max_size: int = 60) -> st.SearchStrategy[str]:
    """Text a person can type (any Unicode but unpaired surrogates)."""
    return st.text(max_size=max_size)


def odd_texts(max_pieces: int = 6) -> st.SearchStrategy[str]:
    """Strings assembled from pieces known to trip parsers, mixed with arbitrary text."""
    piece = st.sampled_from(ODD_PIECES) | st.text(max_size=8)
    return st.lists(piece, max_size=max_pieces).map("".join)


def huge_texts(min_chars: int = 10_000, max_chars: int = 100_000) -> st.SearchStrategy[str]:
    """Long strings, built by repetition (generating them char by char is far too slow)."""
    return st.builds(
        lambda unit, chars: (unit * (chars // len(unit) + 1))[:chars],
        st.text(min_size=1, max_size=4) | st.sampled_from(ODD_PIECES[:-1]),
        st.integers(min_chars, max_chars),
    )


def _nest(depth: int, as_object: bool) -> str:
    return '{"a":' * depth + "1" + "}" * depth if as_object else "[" * depth + "]" * depth


def nested_json(min_depth: int = 50, max_depth: int = 3000) -> st.SearchStrategy[str]:
    """A JSON document nested deeper than any real payload (and than parsers may recurse)."""
    return st.builds(_nest, st.integers(min_depth, max_depth), st.booleans())


def keys() -> st.SearchStrategy[str]:
    """Object keys: a few odd ones, or short arbitrary text."""
    return st.sampled_from(("", " ", "@", "\ud83d", "msgId", "__proto__", "张三")) | st.text(max_size=4)


def json_values(max_leaves: int = 6) -> st.SearchStrategy[Any]:
    """Any value `json.loads` can produce, odd numbers included (NaN and Infinity too: Python's
    json reads them)."""
    scalars = (
        st.none() | st.booleans() | st.integers() | st.floats() | st.sampled_from(ODD_NUMBERS) | odd_texts(3)
    )
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=3) | st.dictionaries(keys(), children, max_size=3),
        max_leaves=max_leaves,
    )


def odd_numbers() -> st.SearchStrategy[Any]:
    """Numbers out of every range a timestamp or duration has, and numbers that are text."""
    return st.sampled_from(ODD_NUMBERS) | st.integers() | st.floats() | st.integers().map(str)


def ids(prefix: str = "") -> st.SearchStrategy[str]:
    """Platform ids: base64-ish like DingTalk's, or odd text."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=$:_-"
    return st.text(alphabet, min_size=1, max_size=24).map(lambda s: prefix + s)


def timestamps_ms() -> st.SearchStrategy[int]:
    """Milliseconds since the epoch in the range DingTalk sends (2001 … 2286)."""
    return st.integers(10**12, 10**13 - 1)


def _rich_text_items(text: st.SearchStrategy[str]) -> st.SearchStrategy[list[dict[str, Any]]]:
    picture = st.builds(
        lambda code: {"type": "picture", "downloadCode": code, "pictureDownloadCode": code[:8]},
        ids("pic"),
    )
    return st.lists(st.builds(lambda t: {"text": t}, text) | picture, max_size=5)


@st.composite
def message_bodies(
    draw: st.DrawFn, msgtype: str, text: st.SearchStrategy[str], odd: bool = False
) -> dict[str, Any]:
    """The type-specific part of a bot message (`text` or `content`); `odd` numbers in it too."""
    duration = st.integers(0, 60_000) | (odd_numbers() if odd else st.nothing())
    if msgtype == "text":
        return {"text": {"content": draw(text)}}
    if msgtype == "richText":
        return {"content": {"richText": draw(_rich_text_items(text))}}
    if msgtype == "picture":
        code = draw(ids("pic"))
        return {"content": {"downloadCode": code, "pictureDownloadCode": code}}
    if msgtype == "audio":
        return {
            "content": {
                "duration": draw(duration),
                "downloadCode": draw(ids("aud")),
                "recognition": draw(text),
            }
        }
    if msgtype == "file":
        return {
            "content": {
                "downloadCode": draw(ids("file")),
                "fileName": draw(st.text(min_size=1, max_size=30)),
                "fileId": draw(ids()),
            }
        }
    if msgtype == "video":
        return {
            "content": {
                "downloadCode": draw(ids("vid")),
                "duration": draw(st.integers(0, 600_000).map(str) | st.integers(0, 600_000)),
                "videoType": "mp4",
            }
        }
    return {"content": draw(json_values())}


@st.composite
def valid_payloads(
    draw: st.DrawFn,
    msgtypes: tuple[str, ...] = MSGTYPES,
    text: st.SearchStrategy[str] | None = None,
    group: bool | None = None,
    odd: bool = False,
) -> dict[str, Any]:
    """A bot message as DingTalk sends it: every documented field with its documented type."""
    msgtype = draw(st.sampled_from(msgtypes))
    in_group = draw(st.booleans()) if group is None else group
    staff_id = draw(st.none() | ids())
    payload: dict[str, Any] = {
        "conversationId": draw(ids("cid")),
        "conversationType": "2" if in_group else "1",
        "msgId": draw(ids("msg")),
        "msgtype": msgtype,
        "senderId": draw(ids("$:LWCP_v1:$")),
        "senderNick": draw(st.text(min_size=1, max_size=12)),
        "senderCorpId": draw(ids("ding")),
        "chatbotUserId": BOT_USER_ID,
        "chatbotCorpId": draw(ids("ding")),
        "isAdmin": draw(st.booleans()),
        "createAt": draw(timestamps_ms()),
        **draw(message_bodies(msgtype, clean_texts() if text is None else text, odd)),
    }
    if staff_id is not None:
        payload["senderStaffId"] = staff_id
    if draw(st.booleans()):
        payload["robotCode"] = draw(ids("ding"))
    if staff_id is not None or draw(st.booleans()):
        payload["sessionWebhook"] = "https://oapi.dingtalk.com/robot/sendBySession?session=" + draw(ids())
        payload["sessionWebhookExpiredTime"] = draw(timestamps_ms())
    if in_group:
        payload["conversationTitle"] = draw(st.text(max_size=20))
        others = draw(st.lists(ids("$:LWCP_v1:$u"), max_size=3, unique=True))
        at_bot = draw(st.booleans())
        payload["isInAtList"] = at_bot
        payload["atUsers"] = [{"dingtalkId": o, "staffId": f"s{i}"} for i, o in enumerate(others)] + (
            [{"dingtalkId": BOT_USER_ID}] if at_bot else []
        )
    return payload


@st.composite
def bot_payloads(draw: st.DrawFn) -> dict[str, Any]:
    """Bot messages as they might come from a buggy client, a new platform version or an
    attacker: valid ones mutated (fields dropped, retyped, added) and unknown message types."""
    msgtype = draw(st.sampled_from(MSGTYPES + UNKNOWN_MSGTYPES))
    text = st.one_of(clean_texts(), odd_texts(), huge_texts())
    payload = draw(valid_payloads(msgtypes=(msgtype,), text=text, odd=True))
    times = st.sampled_from(("createAt", "sessionWebhookExpiredTime"))
    payload.update(draw(st.dictionaries(times, odd_numbers(), max_size=2)))
    for name in draw(st.sets(st.sampled_from(sorted(payload)), max_size=3)):
        del payload[name]
    payload.update(draw(st.dictionaries(st.sampled_from(PAYLOAD_FIELDS), json_values(), max_size=3)))
    payload.update(draw(st.dictionaries(keys(), json_values(4), max_size=2)))
    if draw(st.integers(0, 9)) == 0:  # rarely: a value nested deeper than any parser expects
        depth = draw(st.integers(100, 600))
        nested: Any = []
        for _ in range(depth):
            nested = [nested]
        payload[draw(st.sampled_from(("extra", "content", "atUsers")))] = nested
    return payload


def frame_data() -> st.SearchStrategy[Any]:
    """A frame's `data`: usually a payload encoded as JSON, sometimes anything else."""
    return st.one_of(
        bot_payloads().map(json.dumps),
        bot_payloads().map(json.dumps),
        bot_payloads().map(json.dumps),
        valid_payloads().map(json.dumps),
        bot_payloads(),  # already an object, not a string
        json_values().map(json.dumps),
        nested_json().map(lambda doc: f'{{"msgId": "m", "msgtype": "text", "x": {doc}}}'),
        nested_json(),
        st.sampled_from(["", "{", "{not json", "null", "[]", '"text"', "42", "NaN", "\x00", "{}"]),
        st.text(max_size=30),
        json_values(),
    )


@st.composite
def frames(draw: st.DrawFn) -> dict[str, Any]:
    """A Stream frame envelope: bot messages most often, SYSTEM and others around them, and
    envelopes with missing or retyped parts."""
    kind = draw(st.sampled_from(("bot", "bot", "bot", "system", "event", "callback", "odd")))
    if kind == "bot":
        frame_type, topic = "CALLBACK", BOT_MESSAGE_TOPIC
    elif kind == "system":
        frame_type, topic = "SYSTEM", draw(st.sampled_from(SYSTEM_TOPICS))
    elif kind == "event":
        frame_type, topic = "EVENT", draw(st.sampled_from(OTHER_TOPICS))
    elif kind == "callback":
        frame_type, topic = "CALLBACK", draw(st.sampled_from(OTHER_TOPICS))
    else:
        frame_type = draw(st.sampled_from((*FRAME_TYPES, "system", "ACK", "")) | odd_texts(2))
        topic = draw(st.sampled_from((BOT_MESSAGE_TOPIC, *SYSTEM_TOPICS, *OTHER_TOPICS)) | odd_texts(2))
    if kind == "system":
        data: Any = draw(
            st.dictionaries(st.sampled_from(("opaque", "reason")), odd_texts(3), max_size=2).map(json.dumps)
            | frame_data()
        )
    else:
        data = draw(frame_data())
    headers: dict[str, Any] = {
        "appId": draw(ids()),
        "connectionId": draw(ids()),
        "contentType": "application/json",
        "messageId": draw(ids()),
        "time": str(draw(timestamps_ms())),
        "topic": topic,
    }
    frame: dict[str, Any] = {"specVersion": "1.0", "type": frame_type, "headers": headers, "data": data}
    if draw(st.integers(0, 3)) == 0:  # a damaged envelope
        for name in draw(st.sets(st.sampled_from(sorted(headers)), max_size=2)):
            del headers[name]
        headers.update(
            draw(st.dictionaries(st.sampled_from(sorted(headers) or ["messageId"]), json_values(3)))
        )
        for name in draw(st.sets(st.sampled_from(sorted(frame)), max_size=2)):
            del frame[name]
        frame.update(
            draw(st.dictionaries(st.sampled_from(("specVersion", "type", "headers", "data")), json_values(3)))
        )
    return frame


def raw_frames() -> st.SearchStrategy[str | bytes]:
    """What a websocket may deliver: frames as JSON text or bytes, and things that are not."""
    return st.one_of(
        frames().map(json.dumps),
        frames().map(json.dumps),
        frames().map(json.dumps),
        frames().map(lambda f: json.dumps(f).encode()),
        json_values().map(json.dumps),
        nested_json(),
        st.sampled_from(["", "{", "[]", "null", '"frame"', '{"headers": 5}', '{"headers": ["x"]}']),
        st.text(max_size=40),
        st.binary(max_size=40),
    )
