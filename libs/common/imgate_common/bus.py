"""The bus contract: every subject, stream and consumer, declared once."""

import zlib
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

INBOUND_STREAM = "IM_INBOUND"
RUNS_STREAM = "AGENT_RUNS"
REPLIES_STREAM = "AGENT_REPLIES"

RUNNER_CONSUMER = "agent-runner"

MSG_ID_HEADER = "Nats-Msg-Id"

# JetStream object store bucket holding the media users sent; messages carry the object names.
MEDIA_BUCKET = "imgate-media"


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


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: list[str]
    max_age_s: float
    duplicate_window_s: float
    retention: RetentionPolicy = RetentionPolicy.LIMITS


# Inbound keeps a 2-minute dedup window: DingTalk redelivers an un-ACKed message about a minute
# later under the same msgId. Longer-lived dedup is the router's job (Redis).
STREAMS = (
    StreamSpec(INBOUND_STREAM, [INBOUND_ALL], max_age_s=24 * 3600, duplicate_window_s=120),
    StreamSpec(
        RUNS_STREAM,
        [RUNS_ALL],
        max_age_s=24 * 3600,
        duplicate_window_s=120,
        retention=RetentionPolicy.WORK_QUEUE,
    ),
    # Replies matter only while a card is on screen; an hour covers any slow model.
    StreamSpec(REPLIES_STREAM, [REPLIES_ALL], max_age_s=3600, duplicate_window_s=120),
)


def stream_config(spec: StreamSpec, replicas: int) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        subjects=spec.subjects,
        retention=spec.retention,
        storage=StorageType.FILE,
        max_age=spec.max_age_s,
        duplicate_window=spec.duplicate_window_s,
        discard=DiscardPolicy.OLD,
        num_replicas=replicas,
    )


async def provision_streams(js: JetStreamContext, replicas: int = 1) -> None:
    """Create or update every stream; safe to call from every service at every start."""
    for spec in STREAMS:
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
