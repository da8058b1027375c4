"""Control requests to the connector that owns a channel (core NATS request/reply)."""

from dataclasses import dataclass

import structlog
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from opentelemetry import trace
from prometheus_client import Counter
from pydantic import ValidationError

from imgate_common.bus import control_subject
from imgate_common.config_cache import announce_change
from imgate_common.messages import ConfigKind, ControlAction, ControlReply, ControlRequest

log = structlog.get_logger()
tracer = trace.get_tracer("imgate.admin_api")


@dataclass(frozen=True)
class ControlResult:
    """What became of one control request: the connector's reply, or why there is none."""

    action: ControlAction
    outcome: str  # answered | refused | timeout | no_responders | failed | invalid_reply
    reply: ControlReply | None = None


class ChannelControl:
    """Sends start/stop/restart/reload; an unanswered request is logged, never raised, because
    connectors also reconcile from the database, so the change still lands."""

    def __init__(self, nc: NATS, timeout_s: float, counter: Counter | None = None) -> None:
        self._nc = nc
        self._timeout_s = timeout_s
        self._counter = counter

    async def announce(self, kind: ConfigKind, record_id: int | None = None) -> None:
        """Tell routers and runners to drop the configuration they cached; never raises (their
        caches also expire on their own)."""
        try:
            await announce_change(self._nc, kind, record_id)
        except (NatsError, OSError) as exc:
            log.warning("config_change_not_announced", kind=str(kind), error_type=type(exc).__name__)

    async def send(self, channel_id: int, action: ControlAction) -> ControlResult:
        # Every control request follows a change of the channel (or of its agent): routers and
        # runners hear of it first, so the connector's reload and the next message agree.
        await self.announce(ConfigKind.CHANNEL, channel_id)
        with tracer.start_as_current_span("channel_control", record_exception=False) as span:
            span.set_attributes({"imgate.channel_id": channel_id, "imgate.control_action": str(action)})
            result = await self._request(channel_id, action)
            span.set_attribute("imgate.control_outcome", result.outcome)
        if self._counter is not None:
            self._counter.labels(str(action), result.outcome).inc()
        return result

    async def _request(self, channel_id: int, action: ControlAction) -> ControlResult:
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
            return ControlResult(action, "no_responders")
        except TimeoutError:  # nats' own TimeoutError derives from the builtin one
            bound.warning("channel_control_timeout", timeout_s=self._timeout_s)
            return ControlResult(action, "timeout")
        except NatsError as exc:
            bound.warning("channel_control_failed", error_type=type(exc).__name__)
            return ControlResult(action, "failed")
        try:
            reply = ControlReply.model_validate_json(msg.data)
        except ValidationError:
            bound.warning("channel_control_reply_invalid", size=len(msg.data))
            return ControlResult(action, "invalid_reply")
        if reply.ok:
            bound.info("channel_control_answered", state=str(reply.state), owner=reply.owner)
            return ControlResult(action, "answered", reply)
        bound.warning("channel_control_refused", state=str(reply.state), owner=reply.owner, error=reply.error)
        return ControlResult(action, "refused", reply)
