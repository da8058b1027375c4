"""Versioned message models carried on the bus; every producer and consumer validates them."""

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from imgate_common.errors import FailureCategory
from imgate_common.platforms import AnyReplyData, Platform, PlatformReplyData

CONTRACT_VERSION: Literal[1] = 1


def utcnow() -> datetime:
    return datetime.now(UTC)


class Contract(BaseModel):
    """Base of bus models: versioned, strict about unknown versions, tolerant of extra fields."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    v: Literal[1] = CONTRACT_VERSION


# Run ids derive from the platform message id, so every redelivery maps to the same run, and the
# connector can open the reply card (outTrackId = run id) before the router has seen the message.
RUN_NAMESPACE = uuid.UUID("5b0e7c1a-3f0b-4c57-9d8e-2a1f6c9b7e41")


# An operator's replay of a dead-lettered message is a new attempt at it, answered as a new run
# (its own card): replay N > 0 is folded into the run id, replay 0 keeps the original one. A
# message is replayed at most MAX_REPLAYS times (the admin API refuses more).
MAX_REPLAYS = 5


def run_id_for(platform: str, channel_id: int, message_id: str, replay: int = 0) -> str:
    name = f"{platform}:{channel_id}:{message_id}"
    if replay:
        name = f"{name}:replay:{replay}"
    return str(uuid.uuid5(RUN_NAMESPACE, name))


class MessageKind(StrEnum):
    TEXT = "text"
    RICH_TEXT = "rich_text"
    IMAGE = "image"
    AUDIO = "audio"
    FILE = "file"
    VIDEO = "video"
    UNSUPPORTED = "unsupported"


class ConversationType(StrEnum):
    SINGLE = "single"
    GROUP = "group"


# Models written before the platform-neutral names (still in streams, dead letters and queues)
# carry DingTalk's words; each field also accepts its old name.
def _formerly(old: str, new: str) -> Any:
    return Field(None, validation_alias=AliasChoices(new, old))


class Sender(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str  # the platform's stable user id (DingTalk: staff id when known, else senderId)
    employee_id: str | None = _formerly("staff_id", "employee_id")  # DingTalk: staff id
    nick: str | None = None
    tenant_id: str | None = _formerly("corp_id", "tenant_id")  # the organisation; DingTalk: corp id
    is_admin: bool = False


class Attachment(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: MessageKind
    download_code: str | None = None
    name: str | None = None
    duration_ms: int | None = None
    # Filled by the connector once it fetched the bytes: where they are kept (media object store
    # key), how big they are and what they are; `error` says why they could not be fetched.
    object_name: str | None = None
    size: int | None = None
    content_type: str | None = None
    sha256: str | None = None
    error: str | None = None


class Mention(BaseModel):
    """Someone other than the bot that the sender @mentioned."""

    model_config = ConfigDict(frozen=True)

    id: str  # the platform's user id (DingTalk: dingtalkId)
    employee_id: str | None = _formerly("staff_id", "employee_id")


ReplyData = TypeVar("ReplyData", bound=PlatformReplyData)

# Reply-target fields that were DingTalk's and flat before `platform_data`.
_FLAT_DINGTALK_FIELDS = ("robot_code", "session_webhook", "session_webhook_expires_at")


class ReplyTarget(BaseModel):
    """Everything a connector needs to answer in the right chat, carried with the work."""

    model_config = ConfigDict(frozen=True)

    platform: str
    channel_id: int
    conversation_id: str  # the platform's conversation id
    conversation_type: ConversationType
    sender_id: str
    sender_employee_id: str | None = _formerly("sender_staff_id", "sender_employee_id")
    sender_nick: str | None = None  # to @mention the sender when answering in a group
    inbound_message_id: str
    # When the user sent the message, by the platform's clock: orders a conversation's answers
    # wherever they are rendered (a channel's new owner never saw the messages arrive).
    sent_at: datetime | None = None
    # What only the target's platform reads (a DingTalk robot code and session webhook).
    platform_data: AnyReplyData | None = None

    @model_validator(mode="before")
    @classmethod
    def _flat_dingtalk_fields(cls, data: Any) -> Any:
        """A target written before `platform_data` carried DingTalk's part flat: move it there."""
        if not isinstance(data, dict) or "platform_data" in data:
            return data
        flat = {name: data[name] for name in _FLAT_DINGTALK_FIELDS if data.get(name) is not None}
        if not flat:
            return data
        rest = {name: value for name, value in data.items() if name not in _FLAT_DINGTALK_FIELDS}
        return {**rest, "platform_data": {"platform": Platform.DINGTALK, **flat}}

    def data_as(self, kind: type[ReplyData]) -> ReplyData:
        """The platform's part, empty when the target carries none; another platform's is an error."""
        if self.platform_data is None:
            return kind.empty()
        if not isinstance(self.platform_data, kind):
            raise TypeError(f"a {self.platform_data.platform} target has no {kind.__name__}")
        return self.platform_data


class InboundMessage(Contract):
    """One user message, normalized from any platform; `raw` keeps the platform payload."""

    platform: str
    channel_id: int
    message_id: str  # the platform's message id; also the JetStream dedup id
    kind: MessageKind
    text: str = ""
    platform_type: str  # the platform's own type name, e.g. "richText"
    attachments: list[Attachment] = Field(default_factory=list)
    mentions_bot: bool = False
    mentions: list[Mention] = Field(default_factory=list)  # others @mentioned besides the bot
    sender: Sender
    conversation_title: str | None = None
    target: ReplyTarget
    sent_at: datetime | None = None
    received_at: datetime = Field(default_factory=utcnow)
    raw: dict[str, Any] = Field(default_factory=dict)
    # 0 as the platform delivered it; N: the Nth replay of its dead letter (a new run id).
    replay: int = Field(default=0, ge=0)


class CancelRequest(Contract):
    """`/stop`: end the run's model call and keep what was written so far."""

    run_id: str
    requested_by: str = "user"


class RunRequest(Contract):
    """Ask an agent-runner to answer one user turn of a conversation."""

    run_id: str
    channel_id: int
    conversation_id: str  # our conversation id (database)
    agent_id: int | None
    user_id: int
    user_message_id: int
    text: str
    target: ReplyTarget
    # What the user sent besides text (pictures for a vision model), bytes in the media bucket.
    attachments: list[Attachment] = Field(default_factory=list)
    requested_at: datetime = Field(default_factory=utcnow)
    # The W3C trace context of the message's trace (traceparent, tracestate). A run that waited
    # in its conversation's queue is published later by whichever runner finished the run before
    # it; this keeps it in its own message's trace.
    trace_context: dict[str, str] = Field(default_factory=dict)
    # Which replay of the user's message this run answers (InboundMessage.replay), 0 for none.
    replay: int = Field(default=0, ge=0)
    # The channel's language: the runner's own sentences (a failure) are written in it.
    language: str = Field(default="zh-CN", max_length=16)


class ReplyEventBase(Contract):
    run_id: str
    channel_id: int
    # A redelivered run is redone from scratch; its events carry the next attempt number.
    attempt: int = 1
    seq: int = 0
    target: ReplyTarget
    at: datetime = Field(default_factory=utcnow)


class RunStarted(ReplyEventBase):
    kind: Literal["started"] = "started"


class RunDelta(ReplyEventBase):
    kind: Literal["delta"] = "delta"
    text: str  # the new text since the previous delta
    length: int  # cumulative length of the answer so far, to detect a gap


class RunCompleted(ReplyEventBase):
    kind: Literal["completed"] = "completed"
    text: str  # the whole answer, so a renderer that missed deltas can still finish
    finish_reason: str | None = None


class RunFailed(ReplyEventBase):
    kind: Literal["failed"] = "failed"
    category: FailureCategory
    text: str  # the sentence shown to the user
    partial_text: str = ""


class RunCancelled(ReplyEventBase):
    kind: Literal["cancelled"] = "cancelled"
    partial_text: str = ""


class RunQueued(ReplyEventBase):
    """The message waits for the conversation's current run to finish."""

    kind: Literal["queued"] = "queued"
    position: int  # 1 = next

    @classmethod
    def of(cls, request: RunRequest, position: int) -> "RunQueued":
        """The queued event of `request`, waiting at `position`."""
        return cls(
            run_id=request.run_id, channel_id=request.channel_id, target=request.target, position=position
        )


class Notice(ReplyEventBase):
    """A one-off plain reply not produced by a model (command answers, "unsupported", errors)."""

    kind: Literal["notice"] = "notice"
    text: str


AnyReplyEvent = RunQueued | RunStarted | RunDelta | RunCompleted | RunFailed | RunCancelled | Notice
ReplyEvent = Annotated[AnyReplyEvent, Field(discriminator="kind")]
REPLY_EVENT = TypeAdapter(ReplyEvent)
TERMINAL_KINDS = frozenset({"completed", "failed", "cancelled", "notice"})


class ControlAction(StrEnum):
    START = "start"
    STOP = "stop"
    RESTART = "restart"
    RELOAD = "reload"


class ControlRequest(Contract):
    channel_id: int
    action: ControlAction
    requested_by: str = "admin-api"


class ConfigKind(StrEnum):
    CHANNEL = "channel"
    AGENT = "agent"
    IDENTITY = "identity"


class ConfigChanged(Contract):
    """An administrator changed a channel, an agent or a user's identities: routers and runners
    drop what they cached (`config_cache`)."""

    kind: ConfigKind
    id: int | None = None


class ChannelState(StrEnum):
    CONNECTED = "connected"
    CONNECTING = "connecting"
    DISCONNECTED = "disconnected"
    DISABLED = "disabled"


class ControlReply(Contract):
    channel_id: int
    ok: bool
    state: ChannelState
    error: str | None = None
    owner: str | None = None


class ChannelStatus(Contract):
    """Live health of one channel connection, written by its owning connector."""

    channel_id: int
    state: ChannelState
    owner: str | None = None
    connected_at: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    reconnects: int = 0
    last_inbound_at: datetime | None = None
    messages_in: int = 0
    replies_out: int = 0
    rate_limit_hits: int = 0
    # Payloads that could not be read (ACKed and dropped), publishes the bus did not confirm
    # (not ACKed, so the platform redelivers), answers sent as plain text because the card failed.
    messages_malformed: int = 0
    publish_failures: int = 0
    fallback_replies: int = 0
    # How the app's card budget is used now: full, thin (fewer streaming updates) or one-call
    # (new answers without a card, one message each); None where the platform has no cards.
    card_mode: str | None = None
    updated_at: datetime = Field(default_factory=utcnow)

    def uptime_seconds(self, now: datetime | None = None) -> float | None:
        if self.state != ChannelState.CONNECTED or self.connected_at is None:
            return None
        return ((now or utcnow()) - self.connected_at).total_seconds()


class DeadLetter(Contract):
    """A message a consumer gave up on, kept whole (subject, headers, body) for an operator to
    read and replay; carried by the DEAD_LETTERS stream."""

    consumer: str  # the durable consumer that gave up, e.g. router-p3
    stream: str  # where the message came from and where a replay goes back to
    subject: str
    stream_seq: int | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    data_b64: str  # the body exactly as it was, base64
    reason: str  # the last error, one line
    error_type: str = ""
    category: FailureCategory = FailureCategory.INTERNAL
    permanent: bool  # False: a dependency stayed down through every try
    deliveries: int = 0
    channel_id: int | None = None
    run_id: str | None = None
    failed_at: datetime = Field(default_factory=utcnow)
