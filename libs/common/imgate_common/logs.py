"""structlog set-up: console in development, JSON in production, secrets redacted everywhere."""

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import structlog

from imgate_common.telemetry import ids

REDACTED = "[redacted]"
# Keys whose values are secrets wherever they appear in an event.
SECRET_KEYS = re.compile(
    r"(secret|password|passwd|token|api_key|apikey|authorization|ticket|credential)", re.I
)
# Names of query parameters (and name=value pairs) whose values are credentials: API keys, access
# tokens, and the signatures, tickets and sessions that make a download or webhook URL work for
# whoever holds it (S3's X-Amz-Signature, OSS's Signature, DingTalk's ticket= and session=).
CREDENTIAL_NAME = re.compile(
    r"secret|passw(?:or)?d|token|key|ticket|session|signature|sig|credential|auth", re.I
)
# Secret-looking values inside free text: bearer tokens and credential=value pairs.
SECRET_TEXT = re.compile(
    rf"(?i)(bearer\s+|(?<![\w.-])[\w.-]*(?:{CREDENTIAL_NAME.pattern})[\w.-]*=)([^\s&#\"',]+)"
)
# The user-info of a URL in free text: its password, or a lone user name (often a token).
URL_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)([^\s/?#@\"']+)@")


def _masked_userinfo(userinfo: str, replacement: str) -> str:
    user, colon, _password = userinfo.partition(":")
    return f"{user}:{replacement}" if colon else replacement


# What each pattern above needs to match at all: most logged text has none of it, and this one
# search costs a fraction of the two substitutions.
MAYBE_SECRET = re.compile(r"(?i)[=@]|bearer")


def redact_text(text: str, replacement: str = REDACTED) -> str:
    """`text` with bearer tokens, credential=value pairs and URL passwords replaced."""
    if MAYBE_SECRET.search(text) is None:
        return text
    text = URL_USERINFO.sub(lambda m: f"{m.group(1)}{_masked_userinfo(m.group(2), replacement)}@", text)
    return SECRET_TEXT.sub(lambda m: m.group(1) + replacement, text)


def _credential_pairs(part: str, replacement: str) -> str:
    pairs = (pair.partition("=") for pair in part.split("&"))
    return "&".join(
        f"{name}={replacement}" if sep and value and CREDENTIAL_NAME.search(name) else name + sep + value
        for name, sep, value in pairs
    )


def redact_url(url: str, replacement: str = REDACTED) -> str:
    """`url` with the credentials it carries replaced (a user-info password, or a lone user name,
    and credential query or fragment parameters); everything else, and any other text, as given."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return url
    netloc = parts.netloc
    userinfo, at, host = netloc.rpartition("@")
    if at:
        netloc = f"{_masked_userinfo(userinfo, replacement)}@{host}"
    query = _credential_pairs(parts.query, replacement)
    fragment = _credential_pairs(parts.fragment, replacement)
    if (netloc, query, fragment) == (parts.netloc, parts.query, parts.fragment):
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
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


class _CurrentStderr:
    """Whatever `sys.stderr` is when a line is written, not when logging was configured.

    Loggers are cached on first use, each holding its stream. Holding `sys.stderr` itself would
    pin the stream of that moment: a replaced one (a test's capture) is closed later, and from then
    on every line raises, the lines written inside the NATS client's reconnect callbacks included."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


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
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    # Libraries log through stdlib logging; keep them quiet unless they warn.
    logging.basicConfig(level=logging.WARNING, stream=_CurrentStderr(), format="%(name)s %(message)s")
