"""Records every OpenAPI call and sessionWebhook post with the status it was answered, under the
app it belongs to (`/api-calls` and the counters). Handlers name the app; this middleware sees
the final status, whichever handler or error path produced it."""

import time
from typing import Any

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imsim.state import ApiCall, SimApp

RECORDED_PREFIXES = ("/v1.0/", "/robot/sendBySession")
_APP_KEY = "imsim_app"
_OUTCOME_KEY = "imsim_outcome"


def attribute_call(request: HTTPConnection, app: SimApp, outcome: str | None = None) -> None:
    """Count this request under `app`; `outcome` names a fault (default: by status)."""
    setattr(request.state, _APP_KEY, app)
    if outcome is not None:
        mark_outcome(request, outcome)


def mark_outcome(request: HTTPConnection, outcome: str) -> None:
    """Name how this request went, for whichever app it is (or will be) counted under."""
    setattr(request.state, _OUTCOME_KEY, outcome)


class ApiCallRecorder:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(RECORDED_PREFIXES):
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
        if not isinstance(app, SimApp):
            return  # nobody to count it for (unknown token or client id)
        outcome = request_state.get(_OUTCOME_KEY) or ("ok" if 200 <= status < 300 else "error")
        method, path = scope["method"], scope["path"]
        duration_ms = round((time.monotonic() - started) * 1000, 3)
        app.api_calls.append(ApiCall(method, path, status, outcome, duration_ms))
        app.counters.record_call(f"{method} {path}", status, outcome)
