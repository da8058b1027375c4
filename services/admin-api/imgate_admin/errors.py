"""admin-api errors and the handlers that render every failure as `{"error": {code, message}}`."""

from collections.abc import Mapping
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from imgate_common.errors import Conflict, GatewayError, InvalidRequest, NotFound

log = structlog.get_logger()


# The `responses=` of a route: status code → OpenAPI description and body model.
Responses = dict[int | str, dict[str, Any]]


class StartupError(Exception):
    """The service cannot start with this configuration; the message is one line for operators."""


class Unauthorized(GatewayError):
    status_code = 401


# The API's error codes, by class; the nearest listed ancestor of a raised error decides.
ERROR_CODES: dict[type[GatewayError], str] = {
    Unauthorized: "unauthorized",
    NotFound: "not_found",
    Conflict: "conflict",
    InvalidRequest: "invalid_request",
}

HTTP_CODES = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}


class FieldError(BaseModel):
    loc: str
    msg: str


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: list[FieldError] | None = None  # validation errors only: one entry per field


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


def error_code(exc: GatewayError) -> str:
    for cls in type(exc).__mro__:
        if cls in ERROR_CODES:
            return ERROR_CODES[cls]
    return "internal"


def error_response(
    status_code: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(code=code, message=message))
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status_code, headers=headers)


def _location(loc: tuple[Any, ...]) -> str:
    # "body" / "query" / "path" only say where FastAPI looked; the field path is what a caller fixes.
    parts = [str(p) for p in loc[1:]] if loc and loc[0] in ("body", "query", "path") else list(loc)
    return _clean(".".join(str(p) for p in parts)) or "body"


def _clean(msg: str) -> str:
    # Re-encoded: a field name a client sent may hold lone surrogates, which JSON cannot carry.
    return msg.removeprefix("Value error, ").encode("utf-8", "backslashreplace").decode()


def invalid_fields(exc: ValidationError, *prefix: str | int) -> RequestValidationError:
    """A validation error raised after the request was parsed (a PATCH merged with the stored
    row), rendered like FastAPI's own: 422 with one entry per field, never the input."""
    return RequestValidationError(
        [
            {"loc": ("body", *prefix, *e["loc"]), "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_input=False, include_url=False)
        ]
    )


def invalid_field(loc: tuple[str | int, ...], msg: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("body", *loc), "msg": msg, "type": "value_error"}])


async def gateway_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GatewayError)
    status = exc.status_code
    # A 5xx message may carry internals (a driver error, a URL); callers get a generic sentence.
    message = str(exc) if status < 500 and str(exc) else "internal error"
    if status >= 500:
        log.error("request_failed", error_type=type(exc).__name__, status=status)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return error_response(status, error_code(exc), message, headers)


async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Never echo `input` (nor exc.body): for a missing field it is the whole object, secrets included.
    details = [
        FieldError(loc=_location(tuple(e.get("loc", ()))), msg=_clean(str(e.get("msg", ""))))
        for e in exc.errors()
    ]
    message = "; ".join(f"{d.loc}: {d.msg}" for d in details) or "invalid request"
    body = ErrorBody(error=ErrorDetail(code="validation_error", message=message, details=details))
    return JSONResponse(body.model_dump(exclude_none=True), status_code=422)


async def http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        # FastAPI's own 400 is a body it could not decode (not UTF-8, say): bad input, like
        # malformed JSON, which it reports as 422.
        detail = FieldError(loc="body", msg="could not be decoded as JSON")
        body = ErrorBody(
            error=ErrorDetail(
                code="validation_error", message="body: could not be decoded as JSON", details=[detail]
            )
        )
        return JSONResponse(body.model_dump(exclude_none=True), status_code=422)
    code = HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), exc.headers)


async def unexpected_error(_request: Request, _exc: Exception) -> JSONResponse:
    # Starlette re-raises after this so the server still logs the traceback; the caller only
    # gets the envelope, never the exception text.
    return error_response(500, "internal", "internal error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Exception, unexpected_error)
    app.add_exception_handler(GatewayError, gateway_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
