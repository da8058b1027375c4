"""The bus contract: every subject, stream and consumer, declared once."""

import zlib
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

INBOUND_STREAM = "IM_INBOUND"
RUNS_STREAM = "AGENT_RUNS"
REPLIES_STREAM = "AGENT_REPLIES"
DEAD_LETTERS_STREAM = "DEAD_LETTERS"

RUNNER_CONSUMER = "agent-runner"

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


def router_consumer(partition: int) -> str:
    return f"router-p{partition}"


INBOUND_ALL = "im.inbound.>"


def run_subject(channel_id: int) -> str:
    return f"agent.run.{channel_id}"


RUNS_ALL = "agent.run.>"


def reply_subject(channel_id: int, run_id: str) -> str:
    return f"agent.reply.{channel_id}.{run_id}"


def channel_replies(channel_id: int) -> str:
    return f"agent.reply.{channel_id}.>"


REPLIES_ALL = "agent.reply.>"


def reply_consumer(channel_id: int) -> str:
    """Durable consumer of one channel's replies; whichever replica owns the channel binds it."""
    return f"replies-{channel_id}"


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

# Deliveries a consumer keeps back beyond its tries, to file the dead letter: when the last
# try killed the process (the next delivery only files it) or the dead-letter publish failed.
DEAD_LETTER_SPARE_DELIVERIES = 2


@dataclass(frozen=True)
class ConsumerSpec:
    """A durable consumer and its delivery policy: how many tries a message gets, how long
    to wait before each retry, and (the consume policy's part) a dead letter after the last."""

    durable: str
    stream: str
    filter_subject: str
    ack_wait_s: float
    max_tries: int
    # Delay before the next try after a transient failure of try n (1-based): backoff_s[n - 1],
    # the last value repeating. Applied by the nak (JetStream's own back-off list would replace
    # ack_wait for messages that are still being worked on, and cut a long run short).
    backoff_s: tuple[float, ...]
    max_ack_pending: int | None = None

    @property
    def max_deliver(self) -> int:
        return self.max_tries + DEAD_LETTER_SPARE_DELIVERIES

    def retry_delay(self, delivered: int) -> float:
        return self.backoff_s[min(max(delivered, 1), len(self.backoff_s)) - 1]

    def config(self) -> ConsumerConfig:
        return ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            filter_subject=self.filter_subject,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            max_deliver=self.max_deliver,
            max_ack_pending=self.max_ack_pending,
        )


# A partition lets one message out at a time, so retries there hold up 1/16 of all
# conversations: about four minutes of back-off covers a database or Redis restart, and a
# message that still fails after that is dead-lettered rather than blocking its partition.
ROUTER_TRIES = 8
ROUTER_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)


def router_consumer_spec(partition: int) -> ConsumerSpec:
    return ConsumerSpec(
        durable=router_consumer(partition),
        stream=INBOUND_STREAM,
        filter_subject=inbound_partition_filter(partition),
        ack_wait_s=30.0,
        max_tries=ROUTER_TRIES,
        backoff_s=ROUTER_BACKOFF_S,
        max_ack_pending=1,
    )


# A run is also redelivered when its runner dies mid-stream; six tries survive a few such
# deaths and a couple of minutes of a dependency being down.
RUNNER_TRIES = 6
RUNNER_BACKOFF_S = (2.0, 5.0, 15.0, 30.0, 60.0)


def runner_consumer_spec(ack_wait_s: float) -> ConsumerSpec:
    return ConsumerSpec(
        durable=RUNNER_CONSUMER,
        stream=RUNS_STREAM,
        filter_subject=RUNS_ALL,
        ack_wait_s=ack_wait_s,
        max_tries=RUNNER_TRIES,
        backoff_s=RUNNER_BACKOFF_S,
    )


# A channel's reply events: a final the platform will not take (an outage: cards, webhooks and
# the robot API all down) is tried for about half an hour, well inside the hour the stream
# keeps replies; then it is filed as a dead letter and reported as undeliverable.
REPLY_TRIES = 36
REPLY_BACKOFF_S = (2.0, 5.0, 10.0, 30.0, 60.0)


def reply_consumer_spec(channel_id: int, ack_wait_s: float) -> ConsumerSpec:
    return ConsumerSpec(
        durable=reply_consumer(channel_id),
        stream=REPLIES_STREAM,
        filter_subject=channel_replies(channel_id),
        ack_wait_s=ack_wait_s,
        max_tries=REPLY_TRIES,
        backoff_s=REPLY_BACKOFF_S,
    )


async def ensure_consumer(js: JetStreamContext, spec: ConsumerSpec) -> None:
    """Create the durable consumer, or bring an existing one to the declared policy (the
    server's consumer create, named, updates a consumer whose changes are allowed)."""
    await js.add_consumer(spec.stream, spec.config())


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
