"""Records every call of a platform's API (DingTalk: OpenAPI and sessionWebhook posts) with the
status it was answered, under the app it belongs to (`/api-calls` and the counters). Handlers
name the app; this middleware sees the final status, whichever handler or error path produced it."""

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imsim.identifiers import now_ms


@dataclass
class ApiCall:
    method: str
    path: str
    status: int
    # ok | error (any other non-2xx) | a fault the platform names (DingTalk: unauthorized, fault,
    # card_down, qps_limited, failure_injected, messages_down, errcode_<n>)
    outcome: str
    duration_ms: float
    at: int = field(default_factory=now_ms)
    # The path as its route declares it (`/cards/{card_id}`): what counters group calls by.
    route: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "outcome": self.outcome,
            "duration_ms": self.duration_ms,
            "at": self.at,
        }


@runtime_checkable
class CallLog(Protocol):
    """What a platform's app keeps of the calls made to it."""

    def record_call(self, call: ApiCall) -> None: ...


_APP_KEY = "imsim_app"
_OUTCOME_KEY = "imsim_outcome"


def attribute_call(request: HTTPConnection, app: CallLog, outcome: str | None = None) -> None:
    """Count this request under `app`; `outcome` names a fault (default: by status)."""
    setattr(request.state, _APP_KEY, app)
    if outcome is not None:
        mark_outcome(request, outcome)


def mark_outcome(request: HTTPConnection, outcome: str) -> None:
    """Name how this request went, for whichever app it is (or will be) counted under."""
    setattr(request.state, _OUTCOME_KEY, outcome)


class ApiCallRecorder:
    """Watches the requests under `prefixes`, the platforms' own APIs."""

    def __init__(self, app: ASGIApp, prefixes: Sequence[str]) -> None:
        self.app = app
        self.prefixes = tuple(prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefixes):
            await self.app(scope, receive, send)
            return
        # request.state lives in this dict; make sure there is one to share with the handlers.
        request_state: dict[str, Any] = scope.setdefault("state", {})
        started = time.monotonic()

        async def recording_send(message: Message) -> None:
            # Recorded before the response leaves: a caller that reads the records as soon as
            # it has its answer finds this call in them.
            if message["type"] == "http.response.start":
                self._record(scope, request_state, message["status"], started)
            await send(message)

        await self.app(scope, receive, recording_send)

    @staticmethod
    def _record(scope: Scope, request_state: dict[str, Any], status: int, started: float) -> None:
        app = request_state.get(_APP_KEY)
        if not isinstance(app, CallLog):
            return  # nobody to count it for (unknown token or client id)
        outcome = request_state.get(_OUTCOME_KEY) or ("ok" if 200 <= status < 300 else "error")
        duration_ms = round((time.monotonic() - started) * 1000, 3)
        route = str(getattr(scope.get("route"), "path", scope["path"]))
        app.record_call(ApiCall(scope["method"], scope["path"], status, outcome, duration_ms, route=route))
