"""The ack policy every JetStream handler follows, in one place for both consumer styles.

Parse the body into the contract model; terminate what can never parse, retry (after a delay)
what failed, ack what succeeded. FastStream handlers use `jetstream_handler`; hand-rolled pull
loops (where prefetching must be exact) use `settle`.
"""

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from faststream.nats.annotations import NatsMessage as InjectedMessage
from faststream.nats.message import NatsMessage
from nats.aio.msg import Msg
from pydantic import BaseModel, ValidationError

log = structlog.get_logger()

M = TypeVar("M", bound=BaseModel)

# A failed message comes back after this long: quick enough for a blip, no storm while a
# dependency is down.
RETRY_DELAY_S = 2.0


async def _settle(
    model: type[M],
    body: bytes,
    handle: Callable[[M], Awaitable[None]],
    ack: Callable[[], Awaitable[Any]],
    term: Callable[[], Awaitable[Any]],
    retry: Callable[[], Awaitable[Any]],
) -> None:
    try:
        payload = model.model_validate_json(body)
    except ValidationError as exc:
        log.error("bus_message_invalid", model=model.__name__, error=str(exc)[:300])
        await term()
        return
    try:
        await handle(payload)
    except Exception as exc:
        log.exception("bus_message_failed", model=model.__name__, error=str(exc))
        await retry()
        return
    await ack()


async def settle(model: type[M], msg: Msg, handle: Callable[[M], Awaitable[None]]) -> None:
    """Apply the policy to a nats-py JetStream message."""
    await _settle(model, msg.data, handle, msg.ack, msg.term, lambda: msg.nak(delay=RETRY_DELAY_S))


def jetstream_handler(
    model: type[M],
) -> Callable[[Callable[[M, NatsMessage], Awaitable[None]]], Callable[[NatsMessage], Awaitable[None]]]:
    """Apply the policy around a FastStream handler taking (payload, message)."""

    def wrap(fn: Callable[[M, NatsMessage], Awaitable[None]]) -> Callable[[NatsMessage], Awaitable[None]]:
        async def handle(msg: InjectedMessage) -> None:
            await _settle(
                model,
                msg.body,
                lambda payload: fn(payload, msg),
                msg.ack,
                msg.reject,
                lambda: msg.nack(delay=RETRY_DELAY_S),
            )

        # Not functools.wraps: FastStream must see this signature (the raw message), not fn's.
        handle.__name__ = handle.__qualname__ = fn.__name__
        return handle

    return wrap
