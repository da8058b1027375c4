"""Control requests to the connector that owns a channel (core NATS request/reply)."""

import structlog
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from pydantic import ValidationError

from imgate_common.bus import control_subject
from imgate_common.messages import ControlAction, ControlReply, ControlRequest

log = structlog.get_logger()


class ChannelControl:
    """Sends start/stop/restart/reload; an unanswered request is logged, never raised, because
    connectors also reconcile from the database, so the change still lands."""

    def __init__(self, nc: NATS, timeout_s: float) -> None:
        self._nc = nc
        self._timeout_s = timeout_s

    async def send(self, channel_id: int, action: ControlAction) -> ControlReply | None:
        request = ControlRequest(channel_id=channel_id, action=action)
        bound = log.bind(channel_id=channel_id, action=str(action))
        try:
            msg = await self._nc.request(
                control_subject(channel_id),
                request.model_dump_json().encode(),
                timeout=self._timeout_s,
            )
        except NoRespondersError:
            bound.warning("channel_control_no_responders")
            return None
        except TimeoutError:  # nats' own TimeoutError derives from the builtin one
            bound.warning("channel_control_timeout", timeout_s=self._timeout_s)
            return None
        except NatsError as exc:
            bound.warning("channel_control_failed", error_type=type(exc).__name__)
            return None
        try:
            reply = ControlReply.model_validate_json(msg.data)
        except ValidationError:
            bound.warning("channel_control_reply_invalid", size=len(msg.data))
            return None
        if reply.ok:
            bound.info("channel_control_answered", state=str(reply.state), owner=reply.owner)
        else:
            bound.warning(
                "channel_control_refused", state=str(reply.state), owner=reply.owner, error=reply.error
            )
        return reply
