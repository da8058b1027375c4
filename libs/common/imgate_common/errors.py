"""The project's error hierarchy and the failure categories a chat user is told about
(their sentences: `imgate_common.wording`)."""

from enum import StrEnum


class FailureCategory(StrEnum):
    """Why a run or a message could not be answered; each maps to one sentence a chat user reads."""

    NOT_CONFIGURED = "not_configured"
    AUTH_FAILED = "auth_failed"
    RATE_LIMITED = "rate_limited"
    TIMED_OUT = "timed_out"
    CONTEXT_TOO_LONG = "context_too_long"
    PROVIDER_ERROR = "provider_error"
    UNSUPPORTED_MESSAGE = "unsupported_message"
    # A setting the administrator must fix (a user-mapping filter, an ERP answer shape, an
    # agent key the current secret keys cannot read): retrying cannot help.
    MISCONFIGURED = "misconfigured"
    INTERNAL = "internal"


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""

    category: FailureCategory = FailureCategory.INTERNAL
    status_code: int = 500


class ConfigurationError(GatewayError):
    """A setting is wrong (not the data, not a dependency being down): reported to the operator
    and the user at once, never retried."""

    category = FailureCategory.MISCONFIGURED


class NotFound(GatewayError):
    status_code = 404


class Conflict(GatewayError):
    status_code = 409


class InvalidRequest(GatewayError):
    status_code = 400


class ProviderError(GatewayError):
    """A model provider failed; the category tells the user why."""

    category = FailureCategory.PROVIDER_ERROR
    status_code = 502

    def __init__(
        self, message: str, category: FailureCategory | None = None, *, transient: bool = False
    ) -> None:
        super().__init__(message)
        if category is not None:
            self.category = category
        # Worth another try (before the first token only): overload, rate limit, lost connection.
        self.transient = transient


class PlatformError(GatewayError):
    """An IM platform API answered with an error."""

    status_code = 502

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class RateLimited(PlatformError):
    """The platform said QpsLimit (403) or 429: back off and try again later, not before
    `retry_after_s` when the platform said when its window reopens."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        code: str | None = None,
        *,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, status, code)
        self.retry_after_s = retry_after_s
