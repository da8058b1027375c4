"""The delivery policy every JetStream handler follows, in one place for both consumer styles.

Parse the body into the contract model, then handle it. A failure that can pass (a database,
Redis or NATS out of reach) is retried after an increasing delay, up to the consumer's tries;
any other failure, an unreadable body, or the last try failing ends the message at once: it is
filed as a dead letter, the consumer's `give_up` tells the user and the operator, and it is
terminated. FastStream handlers use `jetstream_handler`; hand-rolled pull loops use `settle`.
"""

import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import nats.errors
import nats.js.errors
import redis.exceptions
import sqlalchemy.exc
import structlog
from nats.aio.msg import Msg
from prometheus_client import Counter
from pydantic import BaseModel, ValidationError

from imgate_common.bus import DEAD_LETTERS_STREAM, MSG_ID_HEADER, dead_letter_subject
from imgate_common.consumers import ConsumerSpec
from imgate_common.errors import FailureCategory, GatewayError
from imgate_common.messages import DeadLetter
from imgate_common.publish import Publish

if TYPE_CHECKING:  # FastStream only where its handlers are wrapped: the connector never loads it
    from faststream.nats.message import NatsMessage

log = structlog.get_logger()

M = TypeVar("M", bound=BaseModel)

RETRIES = Counter(
    "imgate_bus_retries", "Messages handed back to be tried again after a transient failure", ["consumer"]
)
DEAD_LETTERED = Counter(
    "imgate_dead_letters",
    "Messages a consumer gave up on (filed to the DEAD_LETTERS stream), by consumer, failure "
    "category and whether retrying could ever have helped",
    ["consumer", "category", "permanent"],
)

# Failures of what the handler depends on, not of the message: worth another try.
_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,  # ConnectionError and every socket error
    TimeoutError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
    sqlalchemy.exc.OperationalError,  # connection lost, SQLite busy/locked
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,  # no pooled connection in time
    # Another writer got there first (two replicas creating one user on first contact): the
    # next try finds their row.
    sqlalchemy.exc.IntegrityError,
    nats.errors.ConnectionClosedError,
    nats.errors.NoRespondersError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.TimeoutError,
    nats.errors.ConnectionReconnectingError,
    # JetStream refusing a publish for now (503): a full work queue (AGENT_RUNS refuses new runs
    # rather than dropping unanswered ones), no stream leader during an election.
    nats.js.errors.ServiceUnavailableError,
)


@dataclass(frozen=True)
class Failure:
    """Why a message failed: whether another try could help, and what the user is told."""

    error_type: str
    reason: str
    permanent: bool
    category: FailureCategory = FailureCategory.INTERNAL

    def describe(self) -> str:
        kind = "configuration" if self.category == FailureCategory.MISCONFIGURED else self.category.value
        return f"{kind}: {self.reason}"


def _transient(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, GatewayError):
            return bool(getattr(current, "transient", False))
        if isinstance(current, sqlalchemy.exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, _TRANSIENT):
            return True
        current = current.__cause__
    return False


def classify(exc: BaseException) -> Failure:
    category = exc.category if isinstance(exc, GatewayError) else FailureCategory.INTERNAL
    reason = " ".join(str(exc).split())[:500] or type(exc).__name__
    return Failure(type(exc).__name__, reason, permanent=not _transient(exc), category=category)


# Called once a message is given up on (payload None: the body could not be read): tell the
# user, show the error on the channel's status, release what the message held.
GiveUp = Callable[[Any, Failure], Awaitable[None]]
# The channel and run a payload belongs to, for the dead letter's index fields.
Identify = Callable[[Any], tuple[int | None, str | None]]


@dataclass(frozen=True)
class DeliveryPolicy(Generic[M]):
    """One consumer's policy: its spec (tries, back-off), where dead letters go, and what to
    do when it gives up on a message."""

    spec: ConsumerSpec
    publish: Publish  # to file dead letters
    give_up: GiveUp | None = None
    identify: Identify | None = None


@dataclass(frozen=True)
class _Delivery:
    subject: str
    headers: dict[str, str]
    body: bytes
    delivered: int
    stream_seq: int | None
    ack: Callable[[], Awaitable[Any]]
    term: Callable[[], Awaitable[Any]]
    nak: Callable[[float], Awaitable[Any]]


def _delivery(
    raw: Msg,
    ack: Callable[[], Awaitable[Any]],
    term: Callable[[], Awaitable[Any]],
    nak: Callable[[float], Awaitable[Any]],
) -> _Delivery:
    delivered, seq = 1, None
    try:
        metadata = raw.metadata
        delivered = metadata.num_delivered or 1
        seq = metadata.sequence.stream
    except Exception:  # not a JetStream message (an in-memory test broker): first delivery
        pass
    return _Delivery(raw.subject, dict(raw.headers or {}), raw.data, delivered, seq, ack, term, nak)


async def _settle(
    model: type[M], delivery: _Delivery, handle: Callable[[M], Awaitable[None]], policy: DeliveryPolicy[M]
) -> None:
    spec = policy.spec
    bound = log.bind(consumer=spec.durable, subject=delivery.subject, delivered=delivery.delivered)
    try:
        payload: M | None = model.model_validate_json(delivery.body)
    except ValidationError as exc:
        bound.error("bus_message_invalid", model=model.__name__, error=str(exc)[:300])
        failure = Failure("ValidationError", f"unreadable {model.__name__}: {str(exc)[:300]}", True)
        await _give_up(None, failure, delivery, policy)
        return
    assert payload is not None
    if delivery.delivered > spec.max_tries:
        # Delivered again after the last try without an outcome: that try stopped the process
        # (or filing its dead letter failed). Do not try again; file it.
        reason = f"no outcome after {spec.max_tries} tries (the process handling it stopped)"
        await _give_up(payload, Failure("Unfinished", reason, False), delivery, policy)
        return
    try:
        await handle(payload)
    except Exception as exc:
        failure = classify(exc)
        if not failure.permanent and delivery.delivered < spec.max_tries:
            delay = spec.retry_delay(delivery.delivered)
            bound.warning(
                "bus_message_retry", error=failure.reason, error_type=failure.error_type, delay_s=delay
            )
            RETRIES.labels(spec.durable).inc()
            await delivery.nak(delay)
            return
        if isinstance(exc, GatewayError):  # said on purpose: the reason is the whole story
            bound.error("bus_message_failed", model=model.__name__, error=failure.reason)
        else:
            bound.exception("bus_message_failed", model=model.__name__, error=failure.reason)
        await _give_up(payload, failure, delivery, policy)
        return
    await delivery.ack()


async def _give_up(
    payload: M | None, failure: Failure, delivery: _Delivery, policy: DeliveryPolicy[M]
) -> None:
    """File the dead letter and tell whoever must know; then terminate. If either step fails
    while deliveries remain, hand the message back so the next delivery does it again."""
    spec = policy.spec
    channel_id, run_id = None, None
    if payload is not None and policy.identify is not None:
        channel_id, run_id = policy.identify(payload)
    letter = DeadLetter(
        consumer=spec.durable,
        stream=spec.stream,
        subject=delivery.subject,
        stream_seq=delivery.stream_seq,
        headers=delivery.headers,
        data_b64=base64.b64encode(delivery.body).decode(),
        reason=failure.reason,
        error_type=failure.error_type,
        category=failure.category,
        permanent=failure.permanent,
        deliveries=delivery.delivered,
        channel_id=channel_id,
        run_id=run_id,
    )
    # One letter per stored message, however often filing is repeated.
    origin = delivery.stream_seq if delivery.stream_seq is not None else delivery.headers.get(MSG_ID_HEADER)
    msg_id = f"dead:{spec.stream}:{origin}"
    try:
        await policy.publish(dead_letter_subject(spec.durable), DEAD_LETTERS_STREAM, letter, msg_id)
        if policy.give_up is not None:
            await policy.give_up(payload, failure)
    except Exception as exc:
        if delivery.delivered < spec.max_deliver:
            log.warning("dead_letter_retry", consumer=spec.durable, error=str(exc)[:300])
            await delivery.nak(spec.retry_delay(delivery.delivered))
            return
        log.exception("dead_letter_failed", consumer=spec.durable, subject=delivery.subject)
    DEAD_LETTERED.labels(spec.durable, failure.category.value, str(failure.permanent).lower()).inc()
    log.error(
        "bus_message_dead_lettered",
        consumer=spec.durable,
        subject=delivery.subject,
        category=failure.category.value,
        permanent=failure.permanent,
        reason=failure.reason,
        deliveries=delivery.delivered,
        channel_id=channel_id,
        run_id=run_id,
    )
    await delivery.term()


async def settle(
    model: type[M], msg: Msg, handle: Callable[[M], Awaitable[None]], policy: DeliveryPolicy[M]
) -> None:
    """Apply the policy to a nats-py JetStream message."""

    async def nak(delay: float) -> None:
        await msg.nak(delay=delay)

    await _settle(model, _delivery(msg, msg.ack, msg.term, nak), handle, policy)


def jetstream_handler(
    model: type[M], policy: DeliveryPolicy[M]
) -> Callable[[Callable[[M, "NatsMessage"], Awaitable[None]]], Callable[["NatsMessage"], Awaitable[None]]]:
    """Apply the policy around a FastStream handler taking (payload, message)."""
    # FastStream reads the handler's annotation at run time to inject the message.
    from faststream.nats.annotations import NatsMessage as InjectedMessage

    def wrap(fn: Callable[[M, "NatsMessage"], Awaitable[None]]) -> Callable[["NatsMessage"], Awaitable[None]]:
        async def handle(msg: InjectedMessage) -> None:
            async def nak(delay: float) -> None:
                await msg.nack(delay=delay)

            delivery = _delivery(msg.raw_message, msg.ack, msg.reject, nak)
            await _settle(model, delivery, lambda payload: fn(payload, msg), policy)

        # Not functools.wraps: FastStream must see this signature (the raw message), not fn's.
        handle.__name__ = handle.__qualname__ = fn.__name__
        return handle

    return wrap
