"""Publishing bus models durably, each with its own dedup id and the current trace context."""

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from nats.js import JetStreamContext
from pydantic import BaseModel

from imgate_common.bus import MSG_ID_HEADER
from imgate_common.telemetry import inject, producer_span

if TYPE_CHECKING:  # FastStream only for the router's publisher: the connector never loads it
    from faststream.nats import NatsBroker

# publish(subject, stream, model, msg_id): returns once JetStream stored it (or dropped a repeat).
Publish = Callable[[str, str, BaseModel, str], Awaitable[None]]


def _headers(msg_id: str) -> dict[str, str]:
    headers = {MSG_ID_HEADER: msg_id, "content-type": "application/json"}
    inject(headers)
    return headers


async def publish_durable(
    broker: "NatsBroker", subject: str, stream: str, model: BaseModel, msg_id: str
) -> None:
    """Publish to JetStream and return once the stream confirmed it (a repeat is dropped)."""
    await broker.publish(
        model.model_dump_json().encode(),
        subject,
        headers=_headers(msg_id),
        stream=stream,
        timeout=5.0,
    )


def durable_publisher(broker: "NatsBroker") -> Publish:
    async def publish(subject: str, stream: str, model: BaseModel, msg_id: str) -> None:
        await publish_durable(broker, subject, stream, model, msg_id)

    return publish


def jetstream_publisher(js: JetStreamContext, timeout_s: float = 5.0) -> Publish:
    """The same contract over a plain nats-py JetStream context."""

    async def publish(subject: str, stream: str, model: BaseModel, msg_id: str) -> None:
        with producer_span(stream, subject):
            await js.publish(
                subject,
                model.model_dump_json().encode(),
                stream=stream,
                headers=_headers(msg_id),
                timeout=timeout_s,
            )

    return publish
