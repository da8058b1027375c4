"""structlog set-up: console in development, JSON in production, secrets redacted everywhere."""

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from imgate_common.telemetry import ids

REDACTED = "[redacted]"
# Keys whose values are secrets wherever they appear in an event.
SECRET_KEYS = re.compile(
    r"(secret|password|passwd|token|api_key|apikey|authorization|ticket|credential)", re.I
)
# Secret-looking values inside free text: bearer tokens and key=value pairs.
SECRET_TEXT = re.compile(r"(?i)(bearer\s+|(?:secret|password|token|api_key|ticket)=)([^\s&\"',]+)")


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return SECRET_TEXT.sub(lambda m: m.group(1) + REDACTED, value)
    if isinstance(value, dict):
        return {k: REDACTED if _is_secret_key(k) else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v) for v in value)
    return value


def _is_secret_key(key: Any) -> bool:
    return isinstance(key, str) and bool(SECRET_KEYS.search(key)) and key != "token_count"


def redact_secrets(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: blank secret-named fields and secret-looking text."""
    for key in list(event_dict):
        if _is_secret_key(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


def add_trace_ids(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: the trace and span the line was written in, to find its trace."""
    for key, value in ids().items():
        event_dict.setdefault(key, value)
    return event_dict


def configure_logging(service: str, fmt: str = "console", level: str = "INFO") -> None:
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            add_trace_ids,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    # Libraries log through stdlib logging; keep them quiet unless they warn.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(message)s")
