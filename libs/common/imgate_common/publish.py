"""Publishing bus models durably, each with its own dedup id."""

from faststream.nats import NatsBroker
from pydantic import BaseModel

from imgate_common.bus import MSG_ID_HEADER


async def publish_durable(
    broker: NatsBroker, subject: str, stream: str, model: BaseModel, msg_id: str
) -> None:
    """Publish to JetStream and return once the stream confirmed it (a repeat is dropped)."""
    await broker.publish(
        model.model_dump_json().encode(),
        subject,
        headers={MSG_ID_HEADER: msg_id, "content-type": "application/json"},
        stream=stream,
        timeout=5.0,
    )
