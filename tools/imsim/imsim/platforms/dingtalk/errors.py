"""Errors imsim answers the way DingTalk's OpenAPI does: HTTP status plus `{code, message}`."""

from fastapi import Request
from fastapi.responses import JSONResponse

from imsim import identifiers


class OpenApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def invalid_authentication(message: str = "invalid or expired access token") -> OpenApiError:
    return OpenApiError(401, "InvalidAuthentication", message)


def render_open_api_error(error: OpenApiError) -> JSONResponse:
    return JSONResponse(
        status_code=error.status,
        content={
            "code": error.code,
            "message": error.message,
            "requestid": identifiers.new_uuid(),
        },
        headers=error.headers,
    )


async def open_api_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OpenApiError)
    return render_open_api_error(exc)
