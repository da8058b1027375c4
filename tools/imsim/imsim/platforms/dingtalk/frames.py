"""Stream protocol frames: what imsim pushes, and the ACKs it reads back."""

import json
from dataclasses import dataclass
from typing import Any

from imsim.identifiers import now_ms

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"
TOPIC_PING = "ping"
TOPIC_DISCONNECT = "disconnect"


def callback_frame(
    *, app_id: str, connection_id: str, frame_id: str, topic: str, data: str
) -> dict[str, Any]:
    return {
        "specVersion": SPEC_VERSION,
        "type": "CALLBACK",
        "headers": {
            "appId": app_id,
            "connectionId": connection_id,
            "contentType": CONTENT_TYPE,
            "messageId": frame_id,
            "time": str(now_ms()),
            "topic": topic,
        },
        "data": data,
    }


def system_frame(*, frame_id: str, topic: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "specVersion": SPEC_VERSION,
        "type": "SYSTEM",
        "headers": {
            "contentType": CONTENT_TYPE,
            "messageId": frame_id,
            "time": str(now_ms()),
            "topic": topic,
        },
        "data": json.dumps(data),
    }


@dataclass
class ClientAck:
    frame_id: str | None
    code: int | None
    message: str | None
    data: Any

    def data_object(self) -> dict[str, Any] | None:
        """The ACK's data, decoded when it is the usual JSON string."""
        if isinstance(self.data, dict):
            return self.data
        if isinstance(self.data, str):
            try:
                decoded = json.loads(self.data)
            except ValueError:
                return None
            return decoded if isinstance(decoded, dict) else None
        return None


def parse_client_frame(text: str) -> ClientAck | None:
    """A client only ever sends ACK frames; anything unparsable is None."""
    try:
        frame = json.loads(text)
    except ValueError:
        return None
    if not isinstance(frame, dict):
        return None
    headers = frame.get("headers")
    frame_id = headers.get("messageId") if isinstance(headers, dict) else None
    code = frame.get("code")
    return ClientAck(
        frame_id=frame_id if isinstance(frame_id, str) else None,
        code=code if isinstance(code, int) else None,
        message=frame.get("message"),
        data=frame.get("data"),
    )
