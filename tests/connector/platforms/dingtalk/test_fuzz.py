"""Fuzzing the DingTalk inbound path: Stream frames into `DingTalkAdapter._on_frame`, bot
payloads into `translate`, through the real `InboundPublisher`.

The adapter runs its own code; only its collaborators are recorders: the websocket (ACKs), the
JetStream context (publishes), the reply surface (what the sender is told) and the accepted hook.
The policy pinned here (adapter.py): a frame that parses is ACKed exactly once — a bot message
after the bus confirmed it, an unreadable one at once (counted, the sender told once) — except a
bot message whose publish failed, which stays un-ACKed so DingTalk redelivers it; a frame that is
not JSON has no id to ACK. Nothing is published twice for one frame, and what is published is an
`InboundMessage` the router can parse.
"""

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, cast

import httpx
import nats.errors
import pytest
import websockets
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import PubAck
from pydantic import ValidationError
from redis.asyncio import Redis

from imgate_common.bus import INBOUND_STREAM, MSG_ID_HEADER, inbound_subject
from imgate_common.channels import ChannelSpec
from imgate_common.messages import ConversationType, InboundMessage, MessageKind, ReplyTarget
from imgate_common.platforms import DingTalkReplyData
from imgate_connector.health import ChannelHealth
from imgate_connector.inbound import InboundPublisher, dedup_id
from imgate_connector.platforms.dingtalk.adapter import DingTalkAdapter
from imgate_connector.platforms.dingtalk.cards import DingTalkReplySurface
from imgate_connector.platforms.dingtalk.config import BOT_MESSAGE_TOPIC
from imgate_connector.platforms.dingtalk.translate import translate
from imgate_connector.resources import ConnectorResources
from imgate_connector.settings import ConnectorSettings
from imgate_connector.wording import wording_for
from tests.connector.platforms.dingtalk import strategies
from tests.connector.platforms.dingtalk.strategies import BOT_NAME, BOT_USER_ID

CHANNEL_ID = 7
CHANNEL_ROBOT_CODE = "robot-of-channel"
SPEC = ChannelSpec(
    id=CHANNEL_ID,
    name=BOT_NAME,
    platform="dingtalk",
    enabled=True,
    default_agent_id=None,
    session_scope="conversation",
    config={"client_id": "fuzz-app", "client_secret": "s3cret", "robot_code": CHANNEL_ROBOT_CODE},
)
UNREADABLE = wording_for("en").unreadable
KINDS = {
    "text": MessageKind.TEXT,
    "richText": MessageKind.RICH_TEXT,
    "picture": MessageKind.IMAGE,
    "audio": MessageKind.AUDIO,
    "file": MessageKind.FILE,
    "video": MessageKind.VIDEO,
}


def fuzz(examples: int, *suppress: HealthCheck) -> Any:
    """Settings of every property here: no deadline (huge inputs, I/O), no .hypothesis/ dir."""
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,  # no .hypothesis/ directory in the work tree
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, *suppress],
    )


@cache
def connector_settings() -> ConnectorSettings:
    return ConnectorSettings(language="en", max_frames_in_flight=64)


@pytest.fixture(scope="module")
def resources() -> Iterator[ConnectorResources]:
    """The adapter only keeps these (card calls are never reached from inbound frames)."""
    http = httpx.AsyncClient()
    redis = Redis.from_url("redis://127.0.0.1:6379/0")
    yield ConnectorResources(http, redis, "imgate-fuzz")

    async def close() -> None:
        await http.aclose()
        await redis.aclose()

    asyncio.run(close())


# -- recording collaborators -------------------------------------------------------------------


@dataclass
class Event:
    kind: str  # "ack" | "publish" | "reply" | "accepted"
    value: Any


class RecordingSocket:
    """The websocket: records every ACK frame; a closed one raises like `websockets` does."""

    def __init__(self, events: list[Event], closed: bool = False) -> None:
        self.events, self.closed = events, closed

    async def send(self, text: str) -> None:
        if self.closed:
            raise websockets.ConnectionClosed(None, None)
        self.events.append(Event("ack", json.loads(text)))


@dataclass
class Publish:
    subject: str
    payload: bytes
    headers: dict[str, str]
    failed: bool


class RecordingJetStream:
    """JetStream's `publish`: records every attempt; fails the ones `failures` says (a timeout)."""

    def __init__(self, events: list[Event], failures: Sequence[bool]) -> None:
        self.events, self.failures = events, list(failures)

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        timeout: float | None = None,  # noqa: ASYNC109 (JetStreamContext.publish's signature)
        stream: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> PubAck:
        await asyncio.sleep(0)  # a real publish yields to the loop: let other frames interleave
        failed = self.failures.pop(0) if self.failures else False
        self.events.append(Event("publish", Publish(subject, payload, dict(headers or {}), failed)))
        if failed:
            raise nats.errors.TimeoutError
        return PubAck(stream=INBOUND_STREAM, seq=len(self.events), duplicate=False)


class RecordingSurface:
    async def send_text(self, target: ReplyTarget, text: str, *, markdown: bool = False) -> None:
        self.events.append(Event("reply", (target, text)))

    def __init__(self, events: list[Event]) -> None:
        self.events = events


class Harness:
    """One channel's adapter with recording collaborators, fed frames as the socket loop does."""

    def __init__(
        self,
        resources: ConnectorResources,
        *,
        failures: Sequence[bool] = (),
        closed: bool = False,
        jetstream: JetStreamContext | None = None,
        options: ConnectorSettings | None = None,
    ) -> None:
        self.events: list[Event] = []
        self.ws = RecordingSocket(self.events, closed)
        js = jetstream or cast(JetStreamContext, RecordingJetStream(self.events, failures))
        self.health = ChannelHealth(channel_id=CHANNEL_ID, owner="fuzz")
        self.adapter = DingTalkAdapter(
            SPEC, options or connector_settings(), InboundPublisher(js, 5.0), self.health, resources
        )
        self.adapter._surface = cast(DingTalkReplySurface, RecordingSurface(self.events))
        self.adapter.on_accepted = lambda message: self.events.append(Event("accepted", message))
        self.replace = asyncio.Event()

    async def feed(self, *raws: str | bytes) -> None:
        """Hand frames over back to back (as fast frames arrive), then let all handling finish;
        an exception anywhere in it fails the test."""
        for raw in raws:
            await self.adapter._on_frame(self.ws, raw, self.replace)  # type: ignore[arg-type]
        while self.adapter.inbound.in_flight:
            await asyncio.gather(*self.adapter.inbound.in_flight)

    def of(self, kind: str) -> list[Any]:
        return [e.value for e in self.events if e.kind == kind]

    def index(self, kind: str) -> int:
        return next(i for i, e in enumerate(self.events) if e.kind == kind)


# -- what the protocol says a frame is (the oracle) -------------------------------------------


@dataclass
class Envelope:
    type: Any
    topic: Any
    message_id: str
    data: Any = field(repr=False)

    @property
    def bot_message(self) -> bool:
        return self.type == "CALLBACK" and self.topic == BOT_MESSAGE_TOPIC


def envelope(raw: str | bytes) -> Envelope | None:
    """The frame's envelope, or None when it is not a JSON object with (optional) object headers."""
    try:
        frame = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(frame, dict):
        return None
    headers = frame.get("headers") or {}
    if not isinstance(headers, dict):
        return None
    return Envelope(
        frame.get("type"), headers.get("topic"), str(headers.get("messageId", "")), frame.get("data")
    )


def ping_echo(data: Any) -> str | None:
    """What a SYSTEM frame's ACK carries as `data`: the frame's own data object, re-encoded;
    None for an opaque nested about as deep as json recurses (echoed or not, by stack depth)."""
    try:
        decoded = json.loads(data) if isinstance(data, str | bytes) and data else data
    except ValueError:
        decoded = None
    except RecursionError:
        return None
    try:
        return json.dumps(decoded if isinstance(decoded, dict) else {})
    except RecursionError:
        return None


def consumed(publish: Publish) -> InboundMessage:
    """The message as the router reads it off the bus; it must parse."""
    message = InboundMessage.model_validate_json(publish.payload)
    assert publish.headers[MSG_ID_HEADER] == dedup_id(message)
    assert publish.subject == inbound_subject("dingtalk", CHANNEL_ID, message.target.conversation_id)
    assert message.channel_id == CHANNEL_ID and message.message_id
    return message


def bot_frame(payload: Any, frame_id: str) -> str:
    return json.dumps(
        {
            "specVersion": "1.0",
            "type": "CALLBACK",
            "headers": {"contentType": "application/json", "messageId": frame_id, "topic": BOT_MESSAGE_TOPIC},
            "data": json.dumps(payload),
        }
    )


# -- the frame handler ----------------------------------------------------------------------


@fuzz(200)
@given(
    raw=strategies.raw_frames(),
    publish_fails=st.booleans(),
    closed=st.sampled_from([False, False, False, True]),
)
async def test_any_frame_is_acked_at_most_once_and_published_at_most_once(
    resources: ConnectorResources, raw: str | bytes, publish_fails: bool, closed: bool
) -> None:
    h = Harness(resources, failures=[publish_fails], closed=closed)
    await h.feed(raw)  # nothing escapes

    acks, publishes, replies, accepted = h.of("ack"), h.of("publish"), h.of("reply"), h.of("accepted")
    assert len(acks) <= 1 and len(publishes) <= 1 and len(replies) <= 1 and len(accepted) <= 1
    env = envelope(raw)
    if env is None:
        assert h.events == [], "a frame that is not a JSON object has no id to ACK, nor anything else"
        return
    for ack in acks:
        assert ack["code"] == 200
        assert ack["headers"] == {"messageId": env.message_id, "contentType": "application/json"}
    # (On a closed socket the connection ends anyway; the supervisor opens the next one.)
    assert h.replace.is_set() == (env.type == "SYSTEM" and env.topic == "disconnect" and not closed)
    expected_acks = 0 if closed else 1

    if not env.bot_message:
        assert not publishes and not replies and not accepted
        assert len(acks) == expected_acks, "every frame we did not subscribe to is ACKed once"
        echo = ping_echo(env.data) if env.type == "SYSTEM" else None
        if acks and echo is not None:
            assert acks[0]["data"] == echo, "a ping's ACK echoes its opaque"
        return

    if publishes and not publishes[0].failed:  # confirmed by the bus: ACKed after it, no reply
        message = consumed(publishes[0])
        assert len(acks) == expected_acks and not replies
        assert h.index("publish") < h.index("accepted")
        if acks:
            assert acks[0]["message"] == "OK" and h.index("publish") < h.index("ack")
        assert [m.message_id for m in accepted] == [message.message_id]
        assert h.health.messages_in == 1 and h.health.messages_malformed == 0
    elif publishes:  # the bus did not confirm it: not ACKed, so DingTalk redelivers it
        assert not acks and not replies and not accepted
        assert h.health.publish_failures == 1 and h.health.messages_in == 0
    else:  # unreadable: ACKed at once and counted; its sender (if known) told once, never twice
        assert not accepted and h.health.messages_malformed == 1
        assert len(acks) == expected_acks
        if acks:
            assert acks[0]["message"] == "malformed payload dropped"
        else:
            assert not replies, "not ACKed: the redelivery tells the sender, this one must not"
        assert all(text == UNREADABLE for _, text in replies)


@fuzz(40)
@given(
    frames=st.lists(strategies.frames(), min_size=1, max_size=8),
    failures=st.lists(st.booleans(), max_size=8),
)
async def test_frames_in_flight_together_are_each_handled_once(
    resources: ConnectorResources, frames: list[dict[str, Any]], failures: list[bool]
) -> None:
    for i, frame in enumerate(frames):  # each its own frame id, so each ACK names its frame
        if isinstance(frame.get("headers"), dict):
            frame["headers"]["messageId"] = f"frame-{i}"
    raws = [json.dumps(f) for f in frames]
    h = Harness(resources, failures=failures)
    await h.feed(*raws)

    parsed = [e for e in map(envelope, raws) if e is not None]
    acks = Counter(a["headers"]["messageId"] for a in h.of("ack"))
    ids = Counter(e.message_id for e in parsed)  # frames without headers all have the id ""
    assert all(n <= ids[frame_id] for frame_id, n in acks.items()), "a frame ACKed twice"
    others = Counter(e.message_id for e in parsed if not e.bot_message)
    assert all(acks[frame_id] >= n for frame_id, n in others.items()), "a frame left un-ACKed"
    bots = [e for e in parsed if e.bot_message]  # each with its own id
    publishes = h.of("publish")
    confirmed = [p for p in publishes if not p.failed]
    assert len(publishes) <= len(bots), "more publishes than bot messages"
    # A frame of a message whose publish is under way joins that publish (one publish per
    # message at a time), so it is frames, not publishes, that are accepted or left un-ACKed.
    stored = {consumed(publish).message_id for publish in confirmed}
    assert {m.message_id for m in h.of("accepted")} == stored
    assert len(h.of("accepted")) == h.health.messages_in >= len(confirmed)
    unacked = [e for e in bots if not acks[e.message_id]]
    assert len(unacked) == h.health.publish_failures >= len(publishes) - len(confirmed)
    assert len(h.of("reply")) <= h.health.messages_malformed


@fuzz(30)
@given(payload=strategies.valid_payloads(), redeliveries=st.integers(1, 3))
async def test_a_redelivered_message_is_published_with_the_same_dedup_id_each_time(
    resources: ConnectorResources, payload: dict[str, Any], redeliveries: int
) -> None:
    """DingTalk redelivers an un-ACKed message in a new frame with the same msgId: every frame
    is ACKed once, a frame that comes while the message is being published joins that publish,
    and each publish carries the one `Nats-Msg-Id` JetStream deduplicates on."""
    h = Harness(resources)
    await h.feed(*(bot_frame(payload, f"frame-{i}") for i in range(redeliveries + 1)))
    assert sorted(a["headers"]["messageId"] for a in h.of("ack")) == [
        f"frame-{i}" for i in range(redeliveries + 1)
    ]
    publishes = h.of("publish")
    assert 1 <= len(publishes) <= redeliveries + 1
    assert len({p.headers[MSG_ID_HEADER] for p in publishes}) == 1
    assert len({consumed(p).message_id for p in publishes}) == 1


@fuzz(20)
@given(payload=strategies.valid_payloads(), refused=st.booleans())
async def test_frames_of_a_message_being_published_share_that_publish_and_its_outcome(
    resources: ConnectorResources, payload: dict[str, Any], refused: bool
) -> None:
    """Frames that come while their message is being published (DingTalk redelivering it) start
    no publish of their own: each is ACKed once the one publish is confirmed, none if it failed."""
    h = Harness(resources, failures=[refused])
    await h.feed(*(bot_frame(payload, f"frame-{i}") for i in range(3)))
    [publish] = h.of("publish")
    assert publish.failed == refused
    acked = sorted(a["headers"]["messageId"] for a in h.of("ack"))
    assert acked == ([] if refused else ["frame-0", "frame-1", "frame-2"])
    assert h.health.publish_failures == (3 if refused else 0)


@fuzz(30)
@given(payload=strategies.valid_payloads(), drop=st.sampled_from(["msgId", "msgId-null", "msgId-empty"]))
async def test_a_message_without_id_is_acked_dropped_and_its_sender_told_once(
    resources: ConnectorResources, payload: dict[str, Any], drop: str
) -> None:
    payload.setdefault("senderStaffId", "staff-1")  # a sender we can answer
    if drop == "msgId":
        del payload["msgId"]
    else:
        payload["msgId"] = None if drop == "msgId-null" else ""
    h = Harness(resources)
    await h.feed(bot_frame(payload, "f1"))
    assert h.of("publish") == []
    assert [a["message"] for a in h.of("ack")] == ["malformed payload dropped"]
    [(target, text)] = h.of("reply")
    assert text == UNREADABLE
    assert target.sender_id == (payload.get("senderStaffId") or payload["senderId"])


@fuzz(10)
@given(payload=strategies.valid_payloads(msgtypes=("text",)))
async def test_frames_beyond_the_in_flight_limit_wait_unacked_for_redelivery(
    resources: ConnectorResources, payload: dict[str, Any]
) -> None:
    options = connector_settings().model_copy(update={"max_frames_in_flight": 2})
    h = Harness(resources, options=options)
    await h.feed(*(bot_frame(payload, f"frame-{i}") for i in range(4)))
    assert sorted(a["headers"]["messageId"] for a in h.of("ack")) == ["frame-0", "frame-1"]
    assert 1 <= len(h.of("publish")) <= 2  # the second frame may join the first one's publish


# -- the translator -----------------------------------------------------------------------------


@fuzz(150)
@given(payload=strategies.valid_payloads())
def test_a_valid_message_translates_into_a_valid_inbound_message(payload: dict[str, Any]) -> None:
    message = translate(payload, CHANNEL_ID, CHANNEL_ROBOT_CODE, (BOT_NAME,))
    assert InboundMessage.model_validate_json(message.model_dump_json()) == message
    assert message.message_id == payload["msgId"] == message.target.inbound_message_id
    assert message.kind == KINDS[payload["msgtype"]] and message.platform_type == payload["msgtype"]
    assert message.raw == payload
    sender = payload.get("senderStaffId") or payload["senderId"]
    assert message.sender.id == message.target.sender_id == sender
    assert message.target.data_as(DingTalkReplyData).robot_code == (
        payload.get("robotCode") or CHANNEL_ROBOT_CODE
    )
    group = payload["conversationType"] == "2"
    assert message.target.conversation_type == (ConversationType.GROUP if group else ConversationType.SINGLE)
    assert message.target.conversation_id == payload["conversationId"]
    assert message.mentions_bot == bool(group and payload["isInAtList"])
    assert all(m.id != BOT_USER_ID for m in message.mentions)
    assert message.sent_at is not None and message.sent_at.timestamp() * 1000 == pytest.approx(
        payload["createAt"], abs=1
    )


@fuzz(150)
@given(
    payload=strategies.bot_payloads()
    | st.dictionaries(strategies.keys(), strategies.json_values(), max_size=6)
)
def test_translate_raises_only_what_it_documents(payload: dict[str, Any]) -> None:
    """Anything else would escape the adapter's malformed-payload handling."""
    try:
        message = translate(payload, CHANNEL_ID, None, (BOT_NAME,))
    except (KeyError, ValueError, TypeError, ValidationError):
        return
    assert message.message_id and message.message_id == message.target.inbound_message_id


NO_AT = st.characters(exclude_characters="@", exclude_categories=["Cs"])
TEXT_WITHIN_LIMITS = st.text(NO_AT, max_size=300) | strategies.huge_texts(1_000, 20_000).map(
    lambda s: s.replace("@", "").replace("\ud83d", "").replace("\udc00", "")
)


@fuzz(80)
@given(payload=strategies.valid_payloads(msgtypes=("text",), text=TEXT_WITHIN_LIMITS))
async def test_text_reaches_the_bus_as_the_user_wrote_it(
    resources: ConnectorResources, payload: dict[str, Any]
) -> None:
    h = Harness(resources)
    await h.feed(bot_frame(payload, "f1"))
    [publish] = h.of("publish")
    assert consumed(publish).text == payload["text"]["content"].strip()


@fuzz(80)
@given(
    payload=strategies.valid_payloads(msgtypes=("text",), group=True),
    body=st.text(NO_AT, max_size=200),
    separator=st.sampled_from(["\u2005", " ", "  ", "\u2005 "]),
)
def test_the_bots_own_mention_is_all_that_is_taken_from_a_group_text(
    payload: dict[str, Any], body: str, separator: str
) -> None:
    payload["text"] = {"content": f"@{BOT_NAME}{separator}{body}"}
    payload["isInAtList"] = True
    payload["atUsers"] = [{"dingtalkId": BOT_USER_ID}]  # nobody else: every "@" in the text is ours
    message = translate(payload, CHANNEL_ID, None, (BOT_NAME,))
    assert message.mentions_bot and message.text == body.strip()


# -- oversized text against a real JetStream ---------------------------------------------------


@fuzz(8, HealthCheck.function_scoped_fixture)
@example(chars=100_000, unit="a")  # 200 kB on the bus (text and raw): carried
@example(chars=600_000, unit="字")  # 3.6 MB: more than nats-server's default 1 MB max_payload
@given(
    chars=st.integers(0, 4_000) | st.integers(100_000, 800_000),
    unit=st.sampled_from(["a", "字", "字a ", "😀"]),
)
async def test_text_reaches_jetstream_whole_or_is_refused_clearly(
    resources: ConnectorResources, bus: tuple[NATS, JetStreamContext], chars: int, unit: str
) -> None:
    """Within the bus's limit a text arrives whole; beyond it the frame is ACKed (redelivering
    it would fail the same way), nothing is published, and the sender is told once."""
    nc, js = bus
    text = (unit * chars)[:chars]
    payload: dict[str, Any] = {
        "conversationId": f"cidFuzz{chars}",
        "conversationType": "1",
        "msgId": f"msgFuzz-{uuid.uuid4().hex}",
        "msgtype": "text",
        "senderStaffId": "staff-fuzz",
        "senderId": "$:LWCP_v1:$fuzz==",
        "sessionWebhook": "https://oapi.dingtalk.com/robot/sendBySession?session=fuzz",
        "text": {"content": text},
    }
    size = len(translate(payload, CHANNEL_ID, None).model_dump_json().encode())
    h = Harness(resources, jetstream=js)
    await h.feed(bot_frame(payload, "f1"))
    [ack] = h.of("ack")
    if size <= nc.max_payload:
        assert ack["message"] == "OK" and h.of("reply") == []
        subject = inbound_subject("dingtalk", CHANNEL_ID, payload["conversationId"])
        stored = InboundMessage.model_validate_json((await js.get_last_msg(INBOUND_STREAM, subject)).data)
        assert stored.message_id == payload["msgId"]
        assert stored.text == text.strip()
    else:
        assert ack["message"] == "malformed payload dropped"
        assert [text for _, text in h.of("reply")] == [UNREADABLE]
        assert h.health.messages_malformed == 1 and h.health.publish_failures == 0
