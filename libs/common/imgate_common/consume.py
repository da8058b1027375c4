"""The ack policy every JetStream handler follows, wired around the handler in one place."""

from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from faststream.nats.annotations import NatsMessage as InjectedMessage
from faststream.nats.message import NatsMessage
from pydantic import BaseModel, ValidationError

log = structlog.get_logger()

M = TypeVar("M", bound=BaseModel)

# A failed message comes back after this long: quick enough for a blip, no storm while a
# dependency is down (JetStream's max_deliver caps the attempts).
RETRY_DELAY_S = 2.0


def jetstream_handler(
    model: type[M],
) -> Callable[[Callable[[M, NatsMessage], Awaitable[None]]], Callable[[NatsMessage], Awaitable[None]]]:
    """Parse the body into `model`; terminate what can never parse, retry what failed, ack the rest."""

    def wrap(fn: Callable[[M, NatsMessage], Awaitable[None]]) -> Callable[[NatsMessage], Awaitable[None]]:
        async def handle(msg: InjectedMessage) -> None:
            try:
                payload = model.model_validate_json(msg.body)
            except ValidationError as exc:
                log.error("bus_message_invalid", model=model.__name__, error=str(exc)[:300])
                await msg.reject()
                return
            try:
                await fn(payload, msg)
            except Exception as exc:
                log.exception("bus_message_failed", model=model.__name__, error=str(exc))
                await msg.nack(delay=RETRY_DELAY_S)
                return
            await msg.ack()

        # Not functools.wraps: FastStream must see this signature (the raw message), not fn's.
        handle.__name__ = handle.__qualname__ = fn.__name__
        return handle

    return wrap
