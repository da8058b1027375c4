"""Every JetStream consumer and its delivery policy, declared once beside the subjects."""

from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from imgate_common.bus import (
    INBOUND_STREAM,
    REPLIES_STREAM,
    RUNS_ALL,
    RUNS_STREAM,
    channel_replies,
    inbound_partition_filter,
)

RUNNER_CONSUMER = "agent-runner"


def router_consumer(partition: int) -> str:
    return f"router-p{partition}"


def reply_consumer(channel_id: int) -> str:
    """Durable consumer of one channel's replies; whichever replica owns the channel binds it."""
    return f"replies-{channel_id}"


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
    # Where a new consumer starts (an existing one keeps its position).
    deliver_policy: DeliverPolicy = DeliverPolicy.ALL
    # A consumer nobody reads for this long is removed by the server (None: kept).
    inactive_threshold_s: float | None = None

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
            deliver_policy=self.deliver_policy,
            inactive_threshold=self.inactive_threshold_s,
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


# Events a connector keeps in hand at once per channel (JetStream holds back the rest), and
# the reply consumer's limit of unacknowledged ones: room for events the connector has let go of
# (a nak with its back-off) beside those in hand.
REPLY_IN_HAND = 256
REPLY_MAX_ACK_PENDING = REPLY_IN_HAND * 4
# Consumers of deleted channels disappear after a day without a reader.
REPLY_INACTIVE_THRESHOLD_S = 24 * 3600


def reply_consumer_spec(channel_id: int, ack_wait_s: float) -> ConsumerSpec:
    """Starts at new events when first created, so an old run is never replayed into a new card."""
    return ConsumerSpec(
        durable=reply_consumer(channel_id),
        stream=REPLIES_STREAM,
        filter_subject=channel_replies(channel_id),
        ack_wait_s=ack_wait_s,
        max_tries=REPLY_TRIES,
        backoff_s=REPLY_BACKOFF_S,
        max_ack_pending=REPLY_MAX_ACK_PENDING,
        deliver_policy=DeliverPolicy.NEW,
        inactive_threshold_s=REPLY_INACTIVE_THRESHOLD_S,
    )


def run_history_config() -> ConsumerConfig:
    """A throw-away consumer that reads what the stream holds of one run (`reply_subject`),
    from its first event, unacknowledged, gone seconds after its reader."""
    return ConsumerConfig(
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=5.0,
        mem_storage=True,
    )


async def ensure_consumer(js: JetStreamContext, spec: ConsumerSpec) -> None:
    """Create the durable consumer, or bring an existing one to the declared policy (the
    server's consumer create, named, updates a consumer whose changes are allowed)."""
    await js.add_consumer(spec.stream, spec.config())
