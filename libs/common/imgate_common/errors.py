"""The project's error hierarchy and the user-facing sentence for each failure category."""

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


USER_MESSAGES: dict[FailureCategory, str] = {
    FailureCategory.NOT_CONFIGURED: "This bot has no AI agent configured yet. "
    "Please ask your administrator to set one up.",
    FailureCategory.AUTH_FAILED: "The AI service rejected our credentials. "
    "Please ask your administrator to check the agent's API key.",
    FailureCategory.RATE_LIMITED: "The AI service is busy right now. Please try again in a minute.",
    FailureCategory.TIMED_OUT: "The AI service took too long to answer. Please try again.",
    FailureCategory.CONTEXT_TOO_LONG: "This conversation has grown too long for the model. "
    "Send /new to start a fresh one.",
    FailureCategory.PROVIDER_ERROR: "The AI service returned an error. Please try again later.",
    FailureCategory.UNSUPPORTED_MESSAGE: "Sorry, I can't handle this kind of message yet. Please send text.",
    FailureCategory.MISCONFIGURED: "This bot is not set up correctly, so your message could not be "
    "answered. Your administrator has been told; please try again later.",
    FailureCategory.INTERNAL: "Something went wrong on our side. Please try again.",
}


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""

    category: FailureCategory = FailureCategory.INTERNAL
    status_code: int = 500

    @property
    def user_message(self) -> str:
        return USER_MESSAGES[self.category]


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
    """The platform said QpsLimit (403) or 429: back off and try again later."""
