"""Errors imsim answers the way Feishu's OpenAPI does: `{code, msg}` with a Feishu error code.
Business errors are HTTP 200 with code ≠ 0; a missing or bad token is 400, the rate limit 429,
faults 5xx."""

from fastapi import Request
from fastapi.responses import JSONResponse

from imsim import identifiers

# Codes Feishu documents (or that imsim chose where it names no code: marked).
MISSING_TOKEN = 99991661
INVALID_TOKEN = 99991663
RATE_LIMITED = 99991400
INVALID_PARAM = 10003  # also: unknown app_id on the token API
WRONG_SECRET = 10014
ENDPOINT_BAD_CREDENTIALS = 1000040345  # /callback/ws/endpoint: app_id or app_secret is invalid
ENDPOINT_SYSTEM_BUSY = 1
CARD_NOT_FOUND = 300301  # imsim's choice
CARD_ELEMENT_NOT_FOUND = 300302  # imsim's choice
CARD_INVALID = 300303  # imsim's choice: card JSON that does not parse or is not 2.0
STREAMING_CLOSED = 300309
SEQUENCE_NOT_INCREASING = 300317
MESSAGE_NOT_FOUND = 230011  # imsim's choice
MESSAGE_CONTENT_INVALID = 230001
CHAT_RATE_LIMITED = 230020  # sends and replies beyond a chat's rate
RECEIVER_NOT_FOUND = 230013  # imsim's choice
SERVICE_UNAVAILABLE = 2200  # imsim's choice: an injected outage (HTTP 503)
INTERNAL_ERROR = 1000  # imsim's choice: an injected failure (HTTP 500)


class FeishuApiError(Exception):
    def __init__(
        self, code: int, msg: str, *, status: int = 200, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.status = status
        self.headers = headers or {}


def invalid_param(problems: str) -> FeishuApiError:
    return FeishuApiError(INVALID_PARAM, f"invalid param: {problems}", status=400)


def missing_token() -> FeishuApiError:
    return FeishuApiError(
        MISSING_TOKEN,
        "Missing access token for authorization. Please make a request with token attached.",
        status=400,
    )


def invalid_token() -> FeishuApiError:
    return FeishuApiError(
        INVALID_TOKEN,
        "Invalid access token for authorization. Please make a request with token attached.",
        status=400,
    )


def render_api_error(error: FeishuApiError) -> JSONResponse:
    return JSONResponse(
        status_code=error.status,
        content={
            "code": error.code,
            "msg": error.msg,
            "error": {"log_id": identifiers.new_token(), "troubleshooter": ""},
        },
        headers={"x-tt-logid": identifiers.new_token(), **error.headers},
    )


async def api_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FeishuApiError)
    return render_api_error(exc)
