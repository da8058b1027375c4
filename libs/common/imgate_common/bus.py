"""The bus contract: every subject and stream, declared once (their consumers: `consumers`)."""

import zlib
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

INBOUND_STREAM = "IM_INBOUND"
RUNS_STREAM = "AGENT_RUNS"
REPLIES_STREAM = "AGENT_REPLIES"
DEAD_LETTERS_STREAM = "DEAD_LETTERS"

MSG_ID_HEADER = "Nats-Msg-Id"

# JetStream object store bucket holding the media users sent; messages carry the object names.
MEDIA_BUCKET = "imgate-media"
# The stream behind the bucket (JetStream's naming); its byte cap is the bucket's.
MEDIA_STREAM = f"OBJ_{MEDIA_BUCKET}"
# Pictures larger than this are not sent to a model (provider limits are around 5-20 MB), so
# the connector does not fetch them either.
MEDIA_IMAGE_MAX_BYTES = 5 * 1024 * 1024


# Inbound messages are spread over partitions by conversation. Each partition has its own router
# consumer that lets one message out at a time (max_ack_pending=1), so a conversation's messages
# are routed in arrival order by however many router replicas, while different partitions run in
# parallel.
INBOUND_PARTITIONS = 16


def inbound_partition(conversation_id: str) -> int:
    return zlib.crc32(conversation_id.encode()) % INBOUND_PARTITIONS


def inbound_subject(platform: str, channel_id: int, conversation_id: str) -> str:
    return f"im.inbound.{platform}.{channel_id}.{inbound_partition(conversation_id)}"


def inbound_partition_filter(partition: int) -> str:
    return f"im.inbound.*.*.{partition}"


INBOUND_ALL = "im.inbound.>"


def run_subject(channel_id: int) -> str:
    return f"agent.run.{channel_id}"


RUNS_ALL = "agent.run.>"


def reply_subject(channel_id: int, run_id: str) -> str:
    return f"agent.reply.{channel_id}.{run_id}"


def channel_replies(channel_id: int) -> str:
    return f"agent.reply.{channel_id}.>"


REPLIES_ALL = "agent.reply.>"


def cancel_subject(run_id: str) -> str:
    return f"agent.cancel.{run_id}"


CANCEL_ALL = "agent.cancel.*"


def control_subject(channel_id: int) -> str:
    return f"channel.control.{channel_id}"


CONTROL_ALL = "channel.control.*"

# Core NATS, fire and forget: admin-api → every router and runner (`messages.ConfigChanged`).
# Not the control subject: a listener there would answer for no connector, and a request for
# a channel no connector runs would wait for its timeout instead of failing at once.
CONFIG_CHANGED = "imgate.config.changed"


def dead_letter_subject(consumer: str) -> str:
    """Where a consumer files the messages it gave up on (`DeadLetter` records)."""
    return f"deadletter.{consumer}"


DEAD_LETTERS_ALL = "deadletter.>"


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: list[str]
    max_age_s: float
    duplicate_window_s: float
    retention: RetentionPolicy = RetentionPolicy.LIMITS
    max_msgs: int = -1
    max_bytes: int = -1
    # What a full stream does: OLD drops its oldest messages, NEW refuses the publish.
    discard: DiscardPolicy = DiscardPolicy.OLD


@dataclass(frozen=True)
class StreamLimits:
    """How much each stream may hold (settings: `IMGATE_*_MAX_BYTES`, `IMGATE_*_MAX_MSGS`).

    The sum of the byte caps, with the media bucket's, must fit in the JetStream store
    (nats-server's `max_file_store`): then no stream and no user can fill it for the others."""

    inbound_max_bytes: int = 1024 * 1024 * 1024
    inbound_max_msgs: int = 1_000_000
    runs_max_bytes: int = 256 * 1024 * 1024
    runs_max_msgs: int = 100_000
    replies_max_bytes: int = 1024 * 1024 * 1024
    replies_max_msgs: int = 2_000_000
    dead_letters_max_bytes: int = 256 * 1024 * 1024
    dead_letters_max_msgs: int = 10_000


def stream_specs(limits: StreamLimits | None = None) -> tuple[StreamSpec, ...]:
    """Every stream with its limits, and what it does when full (the discard rule):

    - IM_INBOUND keeps (LIMITS retention, fixed once created: NATS refuses to change a stream's
      retention) what the routers already took for a day, so its oldest messages are handled
      ones: a full stream drops the oldest (OLD). Refusing new ones instead would let a day of
      handled messages stop every channel's text. The cap is far above any backlog the routers
      can have (they take a message within seconds; a partition's tries end in a dead letter
      after about four minutes), and each message is small: media travel in the media bucket.
    - AGENT_RUNS is a work queue: everything in it is a run nobody has answered yet, so a full
      stream refuses new runs (NEW). The router's publish fails with a passing error, is tried
      again with back-off, and ends in a dead letter and a failure sentence to the user; none
      is dropped silently.
    - AGENT_REPLIES (an hour) and DEAD_LETTERS (two weeks): the oldest are of runs long shown
      (or letters long read), so they go first (OLD); refusing new replies would leave cards
      spinning.
    """
    limits = limits or StreamLimits()
    return (
        StreamSpec(
            INBOUND_STREAM,
            [INBOUND_ALL],
            max_age_s=24 * 3600,
            duplicate_window_s=120,
            max_msgs=limits.inbound_max_msgs,
            max_bytes=limits.inbound_max_bytes,
        ),
        StreamSpec(
            RUNS_STREAM,
            [RUNS_ALL],
            max_age_s=24 * 3600,
            duplicate_window_s=120,
            retention=RetentionPolicy.WORK_QUEUE,
            max_msgs=limits.runs_max_msgs,
            max_bytes=limits.runs_max_bytes,
            discard=DiscardPolicy.NEW,
        ),
        # Replies matter only while a card is on screen; an hour covers any slow model.
        StreamSpec(
            REPLIES_STREAM,
            [REPLIES_ALL],
            max_age_s=3600,
            duplicate_window_s=120,
            max_msgs=limits.replies_max_msgs,
            max_bytes=limits.replies_max_bytes,
        ),
        # What the consumers gave up on, for an operator to read and replay: two weeks covers a
        # holiday; the count and size limits keep a flood of poison from filling the store (the
        # oldest go first).
        StreamSpec(
            DEAD_LETTERS_STREAM,
            [DEAD_LETTERS_ALL],
            max_age_s=14 * 24 * 3600,
            duplicate_window_s=120,
            max_msgs=limits.dead_letters_max_msgs,
            max_bytes=limits.dead_letters_max_bytes,
        ),
    )


# Inbound keeps a 2-minute dedup window: DingTalk redelivers an un-ACKed message about a minute
# later under the same msgId. Longer-lived dedup is the router's job (Redis).
STREAMS = stream_specs()


def stream_config(spec: StreamSpec, replicas: int) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        subjects=spec.subjects,
        retention=spec.retention,
        storage=StorageType.FILE,
        max_age=spec.max_age_s,
        duplicate_window=spec.duplicate_window_s,
        discard=spec.discard,
        num_replicas=replicas,
        max_msgs=spec.max_msgs,
        max_bytes=spec.max_bytes,
    )


async def provision_streams(
    js: JetStreamContext, replicas: int = 1, limits: StreamLimits | None = None
) -> None:
    """Create or update every stream; safe to call from every service at every start. An
    existing stream takes the current limits and discard rule (both may change on update; its
    retention, which may not, is never changed)."""
    for spec in stream_specs(limits):
        config = stream_config(spec, replicas)
        try:
            await js.stream_info(spec.name)
        except NotFoundError:
            try:
                await js.add_stream(config)
                continue
            except BadRequestError:
                pass  # another service created it between our two calls
        await js.update_stream(config)
