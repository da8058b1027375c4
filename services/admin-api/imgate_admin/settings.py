"""admin-api settings: its own knobs under ADMIN_*, the shared ones under IMGATE_* and the URLs."""

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from imgate_common.settings import CommonSettings


class AdminSettings(CommonSettings):
    # The inherited fields must keep their IMGATE_ names (IMGATE_REDIS_PREFIX, IMGATE_SECRET_KEYS,
    # ...), so instead of switching env_prefix for the whole class each admin field names its
    # ADMIN_ variable; validate_by_name keeps `AdminSettings(token=...)` working in code and tests.
    model_config = SettingsConfigDict(env_prefix="IMGATE_", extra="ignore", validate_by_name=True)

    # The bootstrap bearer token. No default: an admin API without a token is an open door, so
    # start-up refuses an empty one (see `missing_token`). More tokens are made through the API.
    token: SecretStr = Field(SecretStr(""), validation_alias="ADMIN_TOKEN")
    host: str = Field("127.0.0.1", validation_alias="ADMIN_HOST")  # loopback until put behind a proxy
    port: int = Field(8780, validation_alias="ADMIN_PORT")
    # A live connector answers a control request in milliseconds (a start or restart within its
    # 1.5 s connect wait); past this we stop waiting and rely on the connectors' periodic reconcile.
    control_timeout_s: float = Field(2.0, gt=0, validation_alias="ADMIN_CONTROL_TIMEOUT_S")
    # "Test this agent" is one short prompt; a provider slower than this is reported as timed out
    # rather than holding an admin's browser for the agent's full run timeout.
    agent_test_timeout_s: float = Field(20.0, gt=0, validation_alias="ADMIN_AGENT_TEST_TIMEOUT_S")
    # Each readiness check (database, NATS, Redis) gets this long before it counts as unreachable.
    ready_check_timeout_s: float = Field(2.0, gt=0, validation_alias="ADMIN_READY_CHECK_TIMEOUT_S")
    # Every service refuses to start while its keys cannot decrypt what the database holds. When a
    # key is lost for good, this lets the admin API start anyway, to enter the lost secrets again
    # (a masked field then asks for its value) or to see what `secrets rotate` reports unreadable.
    recover_unreadable_secrets: bool = Field(False, validation_alias="ADMIN_RECOVER_UNREADABLE_SECRETS")

    def missing_token(self) -> bool:
        return not self.token.get_secret_value().strip()
